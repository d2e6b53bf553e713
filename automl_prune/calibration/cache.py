"""On-disk cache of calibration statistics.

An entry is keyed by a hash of (model weights fingerprint, calibration windows, settings) and
stored as one safetensors file plus a JSON manifest (which records the sha256 of the file and of
its own other fields: token counts and layout shape the statistics too), written to
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
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from ..integrity import hash_problem, sha256_bytes, sha256_file
from .stats import LinearStats

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FIELDS = ("sum", "sumsq", "abs_sum", "absmax", "gram")
STATS_FILE = "stats.safetensors"


@torch.no_grad()
def model_fingerprint(blocks: list[nn.Module], linears_of) -> str:
    """A cheap but weight-sensitive hash of every prunable weight: name, shape, dtype, float64
    sum and absolute sum, and a strided sample of at most 65,536 values per matrix."""
    h = hashlib.blake2b(digest_size=16)
    for i, block in enumerate(blocks):
        for name, lin in linears_of(block).items():
            w = lin.weight.detach()
            flat = w.reshape(-1)
            step = max(1, flat.numel() // 65536)
            sample = flat[::step].float().cpu().contiguous()
            h.update(f"{i}.{name}:{tuple(w.shape)}:{w.dtype}".encode())
            h.update(repr((float(w.double().sum()), float(w.double().abs().sum()))).encode())
            h.update(sample.numpy().tobytes())
    return h.hexdigest()


def cache_key(**parts) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _entry(cache_dir: Path, key: str) -> Path:
    return cache_dir / "stats" / key[:32]


def save_stats(cache_dir: Path, key: str, stats: list[dict[str, LinearStats]], settings: dict) -> Path:
    """Write an entry atomically; returns its folder."""
    tensors: dict[str, torch.Tensor] = {}
    layout: list[dict[str, str]] = []
    counts: dict[str, list[int]] = {}
    for i, block in enumerate(stats):
        leaders: dict[int, str] = {}
        names: dict[str, str] = {}
        for name, s in block.items():
            leader = leaders.setdefault(id(s), name)
            names[name] = leader
            if leader == name:
                counts[f"{i}.{name}"] = [s.n_tokens, s.n_seqs]
                for f in _FIELDS:
                    t = getattr(s, f)
                    if t is not None:
                        tensors[f"{i}.{name}.{f}"] = t.detach().cpu().contiguous()
        layout.append(names)
    manifest = {"format": FORMAT_VERSION, "key": key, "settings": settings, "layout": layout, "counts": counts}
    final = _entry(cache_dir, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        save_file(tensors, str(tmp / STATS_FILE))
        manifest["manifest_sha256"] = _manifest_digest(manifest)
        manifest["sha256"] = sha256_file(tmp / STATS_FILE)  # just written: read back from the page cache
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if final.exists():  # an entry that failed its check (or a concurrent writer's): replaced
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_stats(cache_dir: Path, key: str, device: torch.device | str = "cpu") -> list[dict[str, LinearStats]] | None:
    """The cached statistics for ``key``, or None if absent, for another key or format, or failing
    its check (then removed, with a warning). The file is read once: its bytes are hashed, then
    parsed."""
    entry = _entry(cache_dir, key)
    if not entry.exists():
        return None
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        return _reject(entry, f"unreadable manifest.json ({exc})")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
        return None
    try:
        data = (entry / STATS_FILE).read_bytes()
    except OSError as exc:
        return _reject(entry, f"unreadable {STATS_FILE} ({exc})")
    for what, recorded, actual in (("manifest.json", manifest.get("manifest_sha256"), _manifest_digest(manifest)),
                                   (STATS_FILE, manifest.get("sha256"), sha256_bytes(data))):
        problem = hash_problem(recorded, actual)
        if problem is not None:
            return _reject(entry, f"{what}: {problem}")
    try:
        tensors = load(data)
        del data
        if torch.device(device).type != "cpu":
            tensors = {k: v.to(device) for k, v in tensors.items()}
        return _unpack(manifest, tensors)
    except (ValueError, KeyError, TypeError, AttributeError, SafetensorError) as exc:
        return _reject(entry, f"unreadable statistics ({type(exc).__name__}: {exc})")


def _manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's fields other than the recorded hashes (canonical JSON)."""
    fields = {k: v for k, v in manifest.items() if k not in ("sha256", "manifest_sha256")}
    return sha256_bytes(json.dumps(fields, sort_keys=True).encode())


def _unpack(manifest: dict, tensors: dict[str, torch.Tensor]) -> list[dict[str, LinearStats]]:
    out: list[dict[str, LinearStats]] = []
    for i, names in enumerate(manifest["layout"]):
        built: dict[str, LinearStats] = {}
        block: dict[str, LinearStats] = {}
        for name, leader in names.items():
            if leader not in built:
                p = f"{i}.{leader}."
                n_tokens, n_seqs = manifest["counts"][f"{i}.{leader}"]
                built[leader] = LinearStats(
                    n_tokens, n_seqs, tensors[p + "sum"], tensors[p + "sumsq"], tensors[p + "abs_sum"],
                    tensors[p + "absmax"], tensors.get(p + "gram"),
                )
            block[name] = built[leader]
        out.append(block)
    return out


def _reject(entry: Path, problem: str) -> None:
    """Warn that the entry in ``entry`` fails its check and remove it (so that it is not probed
    again and the caller's rewrite starts clean); None: a cache miss."""
    log.warning("statistics cache entry %s: %s; removed and treated as a cache miss", entry, problem)
    shutil.rmtree(entry, ignore_errors=True)
    return None
