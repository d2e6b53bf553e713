"""On-disk cache of calibration statistics.

An entry is keyed by a hash of (model weights fingerprint, calibration windows, settings) and
stored as one safetensors file plus a JSON manifest, written to a temporary folder and renamed
into place, so an interrupted write never leaves a half entry. An entry that fails to load or
does not match its key is reported as missing (and rebuilt by the caller).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .stats import LinearStats

FORMAT_VERSION = 1
_FIELDS = ("sum", "sumsq", "abs_sum", "absmax", "gram")


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
        save_file(tensors, str(tmp / "stats.safetensors"))
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_stats(cache_dir: Path, key: str, device: torch.device | str = "cpu") -> list[dict[str, LinearStats]] | None:
    """The cached statistics for ``key``, or None if absent, corrupt or for another key."""
    entry = _entry(cache_dir, key)
    try:
        manifest = json.loads((entry / "manifest.json").read_text())
        if manifest.get("format") != FORMAT_VERSION or manifest.get("key") != key:
            return None
        tensors = load_file(str(entry / "stats.safetensors"), device=str(device))
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
    except (OSError, ValueError, KeyError, TypeError, SafetensorError, json.JSONDecodeError):
        return None
