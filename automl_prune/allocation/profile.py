"""ModelProfile: the per-model facts allocation rules need, computed once, cheap to pickle.

Built from the model and its dense calibration statistics by :meth:`ModelProfile.build`:

- layout: number of decoder blocks, per block the prunable layers' names and sizes;
- OWL material: per block, the Wanda scores ``|W_ij| * ||X_j||_2`` of all its layers pooled and
  divided by the block's mean score; the values above ``owl_floor`` are kept sorted (exactly, or
  as a sketch of ``owl_knots`` values at geometrically spaced ranks from the top when there are
  more), so the outlier ratio ``D_l(M)`` = share of scores > M x mean is a ``searchsorted`` for
  any ``M >= owl_floor``, never a rescoring;
- AlphaPruning material: per layer, the heavy-tail exponent alpha of the spectrum of W^T W
  (:func:`~automl_prune.allocation.esd.esd_alpha`); optional (``with_alphas``) and cached on disk
  by a caller-provided key, since the SVDs are the costly part (SmolLM2-135M, 210 matrices of up
  to 1536 x 576: see ``info['alpha_seconds']``).

The profile holds only numpy arrays, lists and numbers: it pickles, and ``save``/``load`` write a
``torch.save`` file that loads with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..calibration.stats import LinearStats
from ..models.adapters import decoder_blocks, prunable_linears
from ..models.offload import read_block
from .esd import Window, esd_alpha

ALPHA_CACHE_VERSION = 1


@dataclass
class ModelProfile:
    """Per-model facts for allocations. Build with :meth:`build`; construct directly in tests."""

    layer_names: list[list[str]]  # per block, layer names relative to the block
    layer_numels: list[list[int]]  # per block, weight sizes of those layers
    owl_counts: list[int] = field(default_factory=list)  # per block, number of scores (= parameters)
    owl_tails: list[np.ndarray] = field(default_factory=list)  # per block, sorted normalised scores > floor (or a sketch)
    owl_tail_sizes: list[int] = field(default_factory=list)  # per block, how many scores exceed the floor
    owl_floor: float = 1.0
    owl_knots: int = 4096  # sketch size (a tail longer than this is kept as a sketch)
    layer_alphas: list[list[float]] | None = None  # per block, per layer spectral exponent
    layer_shapes: list[list[tuple[int, int]]] = field(default_factory=list)  # per block, (rows, cols) of each layer
    info: dict = field(default_factory=dict)

    # ----- derived ------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return len(self.layer_names)

    @property
    def block_params(self) -> np.ndarray:
        """Prunable parameters per block (float64): the weights of parameter-weighted means."""
        return np.array([sum(n) for n in self.layer_numels], dtype=np.float64)

    @property
    def has_owl(self) -> bool:
        return len(self.owl_tails) == self.n_blocks and self.n_blocks > 0

    @property
    def has_alphas(self) -> bool:
        return self.layer_alphas is not None

    def outlier_ratios(self, m: float) -> np.ndarray:
        """OWL's ``D_l(M)``: share of block l's Wanda scores strictly above ``m`` x the block mean."""
        if not self.has_owl:
            raise ValueError("this profile has no OWL material (build it from the model and its statistics)")
        if m < self.owl_floor:
            raise ValueError(f"M = {m} is below the profile's floor {self.owl_floor}; rebuild with a lower owl_floor")
        out = np.empty(self.n_blocks)
        for b, (tail, size, count) in enumerate(zip(self.owl_tails, self.owl_tail_sizes, self.owl_counts)):
            out[b] = _count_above(tail, size, m, self.owl_knots) / count
        return out

    def block_alphas(self) -> np.ndarray:
        """Per-block mean of the layers' spectral exponents (AlphaPruning's ``block_wise`` mapping)."""
        if self.layer_alphas is None:
            raise ValueError("this profile has no spectral exponents (build it with with_alphas=True)")
        return np.array([float(np.mean(a)) for a in self.layer_alphas])

    # ----- construction -------------------------------------------------------------------------
    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: nn.Module,
        stats: list[dict[str, LinearStats]] | None,
        *,
        with_alphas: bool = True,
        alpha_cache_dir: str | os.PathLike | None = None,
        alpha_cache_key: str | None = None,
        alpha_window: Window = "alphapruning",
        owl_floor: float = 1.0,
        owl_knots: int = 4096,
        store=None,
    ) -> "ModelProfile":
        """Profile of ``model`` (dense weights) with its dense statistics (``stats[block][layer]``).

        ``stats=None`` skips the OWL material. Alphas are read from / written to
        ``alpha_cache_dir`` under ``alpha_cache_key`` (e.g. the model fingerprint) when both are given.
        """
        blocks = decoder_blocks(model)
        names = [list(prunable_linears(b)) for b in blocks]
        numels = [[lin.weight.numel() for lin in prunable_linears(b).values()] for b in blocks]
        shapes = [[tuple(lin.weight.shape) for lin in prunable_linears(b).values()] for b in blocks]
        prof = cls(layer_names=names, layer_numels=numels, owl_floor=float(owl_floor), owl_knots=int(owl_knots),
                   layer_shapes=shapes)
        start = time.perf_counter()
        if stats is not None:
            if len(stats) != len(blocks):
                raise ValueError(f"statistics cover {len(stats)} blocks but the model has {len(blocks)}")
            for i in range(len(blocks)):
                with read_block(blocks, i, store) as block:
                    tail, size, count = _owl_block(prunable_linears(block), stats[i], owl_floor, owl_knots)
                prof.owl_tails.append(tail)
                prof.owl_tail_sizes.append(size)
                prof.owl_counts.append(count)
            prof.info.update(owl_seconds=round(time.perf_counter() - start, 3), owl_floor=owl_floor, owl_knots=owl_knots)
        if with_alphas:
            prof.layer_alphas, alpha_info = layer_alphas(
                blocks, window=alpha_window, cache_dir=alpha_cache_dir, cache_key=alpha_cache_key, store=store
            )
            prof.info.update(alpha_info)
        return prof


# ----- OWL -------------------------------------------------------------------------------------------
def _owl_block(linears: dict[str, nn.Linear], stats: dict[str, LinearStats], floor: float, knots: int):
    """(sorted tail or sketch, tail size, score count) of one block's pooled, mean-normalised
    Wanda scores. The normalisation makes ``||X||_2`` and ``sqrt(scaler_row)`` (OWL's code)
    interchangeable."""
    scores = []
    for name, lin in linears.items():
        if name not in stats:
            raise ValueError(f"no statistics for layer {name!r}")
        act = stats[name].l2.to(lin.weight.device, torch.float32).reshape(1, -1)
        scores.append((lin.weight.detach().float().abs() * act).reshape(-1))
    flat = torch.cat(scores)
    mean = flat.double().mean()
    if not bool(torch.isfinite(mean)) or float(mean) <= 0:
        raise ValueError("the block's Wanda scores are all zero or non-finite")
    z = (flat.double() / mean).float()
    tail = torch.sort(z[z > floor]).values.cpu().numpy()
    size = int(tail.size)
    if size > knots:  # keep values at geometrically spaced ranks from the top (dense where M is large)
        tail = tail[size - _knot_ranks(size, knots)]  # ascending values
    return tail.astype(np.float32), size, int(flat.numel())


def _knot_ranks(size: int, knots: int) -> np.ndarray:
    """Sketch ranks, counted from the top (1 = the largest value), descending: the i-th sketch
    value (ascending order) is the one with ``_knot_ranks(...)[i]`` values >= it."""
    return np.unique(np.round(np.geomspace(1, size, knots)).astype(np.int64))[::-1]


def _count_above(tail: np.ndarray, size: int, m: float, knots: int) -> float:
    """Number of values > m in a sorted tail of ``size`` values (exact) or its sketch (interpolated)."""
    if size <= knots:  # exact
        return float(size - np.searchsorted(tail, np.float32(m), side="right"))
    from_top = _knot_ranks(size, knots).astype(np.float64)
    # value tail[i] has from_top[i] values >= it (from_top[i] - 1 above it, ties aside). For
    # tail[i-1] <= m < tail[i] the count lies between from_top[i-1] - 1 (at m = tail[i-1]) and
    # from_top[i] (just below tail[i], which is still above m): interpolate between those two, so
    # the count is exact where the sketch holds consecutive ranks (about the top knots / ln(size)
    # values, where large M lands)
    m32 = np.float32(m)
    if m32 < tail[0]:
        return float(size)
    if m32 >= tail[-1]:
        return 0.0
    i = int(np.searchsorted(tail, m32, side="right"))  # 1 <= i < len(tail): tail[i-1] <= m < tail[i]
    lo, hi = float(tail[i - 1]), float(tail[i])
    frac = (float(m32) - lo) / (hi - lo)
    return float(from_top[i - 1] - 1.0 + (from_top[i] - from_top[i - 1] + 1.0) * frac)


# ----- AlphaPruning -------------------------------------------------------------------------------------
def _alpha_cache_file(cache_dir: Path, key: str, window: str) -> Path:
    digest = hashlib.sha256(f"{key}|{window}|{ALPHA_CACHE_VERSION}".encode()).hexdigest()[:24]
    return cache_dir / "esd_alpha" / f"{digest}.json"


def layer_alphas(
    blocks: list[nn.Module],
    *,
    window: Window = "alphapruning",
    cache_dir: str | os.PathLike | None = None,
    cache_key: str | None = None,
    store=None,
) -> tuple[list[list[float]], dict]:
    """Per block, per prunable layer spectral exponent; with a JSON disk cache keyed by ``cache_key``.
    ``store``: the blocks are offloaded and brought in one at a time."""
    names = [list(prunable_linears(b)) for b in blocks]
    path = _alpha_cache_file(Path(cache_dir), cache_key, window) if cache_dir and cache_key else None
    if path is not None and path.is_file():
        try:
            entry = json.loads(path.read_text())
            if entry.get("key") == cache_key and entry.get("names") == names and entry.get("window") == window:
                return entry["alphas"], dict(alpha_cache="hit", alpha_seconds=entry.get("seconds"), alpha_window=window)
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: recompute and overwrite
    start = time.perf_counter()
    alphas = []
    for i in range(len(blocks)):
        with read_block(blocks, i, store) as b:
            alphas.append([esd_alpha(lin.weight, window=window) for lin in prunable_linears(b).values()])
    seconds = round(time.perf_counter() - start, 3)
    info = dict(alpha_cache="miss" if path else "off", alpha_seconds=seconds, alpha_window=window)
    if path is not None:
        entry = dict(key=cache_key, window=window, names=names, alphas=alphas, seconds=seconds, version=ALPHA_CACHE_VERSION)
        try:
            _atomic(path, lambda p: Path(p).write_text(json.dumps(entry)))
        except OSError:
            info["alpha_cache"] = "write-failed"
    return alphas, info


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
