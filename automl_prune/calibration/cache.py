"""On-disk cache of calibration statistics.

An entry is keyed by a hash of (model weights fingerprint, calibration windows, settings) and
stored as one safetensors file per decoder block (a block-streamed run reads only the block it
works on) plus a JSON manifest (which records the sha256 of every file and of its own other
fields: token counts and layout shape the statistics too), written to
a temporary folder and renamed into place, so an interrupted write never leaves a half entry. An
entry whose file fails its hash (changed bytes, or an entry from before hashes were recorded) or
fails to load is removed with a warning naming its folder and reported as missing, so the caller
recomputes and rewrites it; one for another key or format is reported as missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from ..integrity import hash_problem, sha256_bytes, sha256_file
from ..models.offload import read_block
from .stats import LinearStats

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: a file per block
REJECTED = "rejected"  # the marker of an entry that failed a check
_FIELDS = ("sum", "sumsq", "abs_sum", "absmax", "gram")


@torch.no_grad()
def model_fingerprint(blocks: list[nn.Module], linears_of, store=None) -> str:
    """A cheap but weight-sensitive hash of every prunable weight: name, shape, dtype, float64
    sum and absolute sum, and a strided sample of at most 65,536 values per matrix. ``store``:
    offloaded blocks are brought in one at a time (the same hash as in memory)."""
    h = hashlib.blake2b(digest_size=16)
    for i in range(len(blocks)):
        with read_block(blocks, i, store) as block:
            _fingerprint_block(h, i, block, linears_of)
    return h.hexdigest()


def _fingerprint_block(h, i: int, block: nn.Module, linears_of) -> None:
    for name, lin in linears_of(block).items():
        w = lin.weight.detach()
        flat = w.reshape(-1)
        step = max(1, flat.numel() // 65536)
        sample = flat[::step].float().cpu().contiguous()
        h.update(f"{i}.{name}:{tuple(w.shape)}:{w.dtype}".encode())
        h.update(repr((float(w.double().sum()), float(w.double().abs().sum()))).encode())
        h.update(sample.numpy().tobytes())


def cache_key(**parts) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _entry(cache_dir: Path, key: str) -> Path:
    return cache_dir / "stats" / key[:32]


def block_file(i: int) -> str:
    """The file of block ``i``'s statistics in an entry."""
    return f"block-{i:04d}.safetensors"


class StatsWriter:
    """Writes an entry block by block (a block-streamed capture holds one block's statistics at a
    time) into a temporary folder; ``commit`` adds the manifest and renames the folder into place."""

    def __init__(self, cache_dir: Path, key: str, settings: dict):
        self.final = _entry(Path(cache_dir), key)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.final.parent))
        self.manifest = {"format": FORMAT_VERSION, "key": key, "settings": settings, "layout": [], "counts": {}, "files": []}

    def add(self, i: int, block: dict[str, LinearStats]) -> None:
        if i != len(self.manifest["layout"]):
            raise ValueError(f"blocks are written in order: expected block {len(self.manifest['layout'])}, got {i}")
        tensors: dict[str, torch.Tensor] = {}
        leaders: dict[int, str] = {}
        names: dict[str, str] = {}
        for name, s in block.items():
            leader = leaders.setdefault(id(s), name)
            names[name] = leader
            if leader == name:
                self.manifest["counts"][f"{i}.{name}"] = [s.n_tokens, s.n_seqs]
                for f in _FIELDS:
                    t = getattr(s, f)
                    if t is not None:
                        tensors[f"{name}.{f}"] = t.detach().cpu().contiguous()
        path = self.tmp / block_file(i)
        save_file(tensors, str(path))
        self.manifest["layout"].append(names)
        self.manifest["files"].append(sha256_file(path))  # just written: read back from the page cache

    def commit(self) -> Path:
        """Put the entry in place; an entry already there that is not rejected (a concurrent writer's,
        which other processes may be reading) is kept and this one dropped; a rejected one is moved
        aside first (readers of its blocks then read the new, equal files)."""
        self.manifest["manifest_sha256"] = _manifest_digest(self.manifest)
        (self.tmp / "manifest.json").write_text(json.dumps(self.manifest, indent=1))
        if _current(self.final, self.manifest["key"]):
            return self.final
        old = self.final.with_name(f".old-{self.final.name}-{os.getpid()}")
        if self.final.exists():
            os.replace(self.final, old)
        os.replace(self.tmp, self.final)
        shutil.rmtree(old, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def save_stats(cache_dir: Path, key: str, stats: list[dict[str, LinearStats]], settings: dict) -> Path:
    """Write an entry atomically (a file per block and a manifest); returns its folder."""
    writer = StatsWriter(cache_dir, key, settings)
    try:
        for i, block in enumerate(stats):
            writer.add(i, block)
        return writer.commit()
    finally:
        writer.abort()


class StatsCacheError(RuntimeError):
    """A block of a cache entry read lazily failed its check (the entry is removed)."""


class CachedStats(Sequence):
    """The statistics of an entry, one block read (and checked against its recorded hash) on each
    access: a block-streamed run holds one block's statistics at a time."""

    def __init__(self, entry: Path, manifest: dict, device: torch.device | str = "cpu"):
        self.entry, self.manifest, self.device = entry, manifest, device
        self.verified: set[int] = set()  # blocks whose file passed its hash in this process: not hashed again

    def __len__(self) -> int:
        return len(self.manifest["layout"])

    def token_counts(self) -> dict[str, int]:
        """Per layer (``"<block>.<name>"``), the calibration tokens its statistics hold (at least 1),
        from the manifest (no block read)."""
        return {f"{i}.{name}": max(int(self.manifest["counts"][f"{i}.{leader}"][0]), 1)
                for i, names in enumerate(self.manifest["layout"]) for name, leader in names.items()}

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i = i % len(self)
        block = _read_block(self.entry, self.manifest, i, self.device, check=i not in self.verified)
        if isinstance(block, str):
            _reject(self.entry, block)
            raise StatsCacheError(f"statistics cache entry {self.entry}: {block}; it is marked for recomputation: "
                                  "run again to recompute it")
        self.verified.add(i)
        return block


def _read_block(entry: Path, manifest: dict, i: int, device, check: bool = True) -> dict[str, LinearStats] | str:
    """Block ``i`` of an entry, or why it cannot be read (``check``: against its recorded hash)."""
    name = block_file(i)
    try:
        data = (entry / name).read_bytes()
    except OSError as exc:
        return f"unreadable {name} ({exc})"
    problem = hash_problem(manifest["files"][i], sha256_bytes(data)) if check else None
    if problem is not None:
        return f"{name}: {problem}"
    try:
        tensors = load(data)
        del data
        if torch.device(device).type != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return _unpack(manifest, i, tensors)
    except (ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        return f"unreadable statistics in {name} ({type(exc).__name__}: {exc})"


def load_stats(cache_dir: Path, key: str, device: torch.device | str = "cpu", *,
               lazy: bool = False) -> list[dict[str, LinearStats]] | CachedStats | None:
    """The cached statistics for ``key``, or None if absent, for another key or format, or failing
    its check (then removed, with a warning). Each block's file is read once: its bytes are hashed,
    then parsed. ``lazy``: a :class:`CachedStats` that reads a block when it is asked for (the
    manifest is checked now, each block's file on its read)."""
    entry = _entry(cache_dir, key)
    if not entry.exists() or (entry / REJECTED).exists():
        return None
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return _reject(entry, f"unreadable manifest.json ({exc})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
        return None
    problem = hash_problem(manifest.get("manifest_sha256"), _manifest_digest(manifest))
    if problem is not None:
        return _reject(entry, f"manifest.json: {problem}")
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) != len(manifest.get("layout", [])):
        return _reject(entry, "manifest.json: no content hash per block")
    if lazy:
        return CachedStats(entry, manifest, device)
    out = []
    for i in range(len(files)):
        block = _read_block(entry, manifest, i, device)
        if isinstance(block, str):
            return _reject(entry, block)
        out.append(block)
    return out


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's fields other than the recorded hashes (canonical JSON)."""
    fields = {k: v for k, v in manifest.items() if k not in ("sha256", "manifest_sha256")}
    return sha256_bytes(json.dumps(fields, sort_keys=True).encode())


def _unpack(manifest: dict, i: int, tensors: dict[str, torch.Tensor]) -> dict[str, LinearStats]:
    built: dict[str, LinearStats] = {}
    block: dict[str, LinearStats] = {}
    for name, leader in manifest["layout"][i].items():
        if leader not in built:
            p = f"{leader}."
            n_tokens, n_seqs = manifest["counts"][f"{i}.{leader}"]
            built[leader] = LinearStats(
                n_tokens, n_seqs, tensors[p + "sum"], tensors[p + "sumsq"], tensors[p + "abs_sum"],
                tensors[p + "absmax"], tensors.get(p + "gram"),
            )
        block[name] = built[leader]
    return block


def _current(entry: Path, key: str) -> bool:
    """True when ``entry`` holds a usable entry for ``key``: this format, not rejected, its manifest
    passing its hash (its blocks are checked when read)."""
    if not entry.exists() or (entry / REJECTED).exists():
        return False
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == FORMAT_VERSION and manifest.get("key") == key
            and hash_problem(manifest.get("manifest_sha256"), _manifest_digest(manifest)) is None)


def _reject(entry: Path, problem: str) -> None:
    """Warn that the entry in ``entry`` fails its check and mark it so (a ``rejected`` file): it is a
    cache miss from then on and the next writer replaces it. Not removed here: other processes (the
    workers of a search) may be reading its other blocks. None: a cache miss."""
    log.warning("statistics cache entry %s: %s; treated as a cache miss and replaced by the next capture", entry, problem)
    try:
        (entry / REJECTED).write_text(problem)
    except OSError:
        pass
    return None
