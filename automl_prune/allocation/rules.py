"""Allocation rules: per-block facts -> per-block sparsities, hitting a global target exactly.

All rules end in :func:`match_target`, which shifts (or scales) a raw per-block schedule and clips
it to ``bounds`` so that the parameter-weighted mean sparsity equals the target. The solve is
exact: a bisection finds which blocks sit at a bound, then the free blocks are solved in closed
form; results are rounded to 12 decimals, so the realised mean equals the target to about 1e-12,
with or without clipping.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np

#: the range every per-block sparsity is clipped to
DEFAULT_BOUNDS: tuple[float, float] = (0.0, 0.99)

ArrayLike = Sequence[float] | np.ndarray


def weighted_mean(values: ArrayLike, weights: ArrayLike) -> float:
    """Parameter-weighted mean: sum(w * v) / sum(w)."""
    v, w = np.asarray(values, np.float64), np.asarray(weights, np.float64)
    return float((w * v).sum() / w.sum())


def match_target(
    raw: ArrayLike,
    weights: ArrayLike,
    target: float,
    *,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    mode: Literal["shift", "scale"] = "shift",
) -> list[float]:
    """``clip(raw + c)`` (mode ``shift``) or ``clip(raw * c)`` (mode ``scale``, raw > 0) with the
    one ``c`` that makes the ``weights``-weighted mean equal ``target``; clipped to ``bounds``.

    The map c -> weighted mean is continuous and non-decreasing, so ``c`` exists whenever
    ``lo <= target <= hi``; where it is flat the returned sparsities are the same for every
    solution. Raises ValueError for an impossible target or bad inputs.
    """
    r = np.asarray(raw, np.float64).reshape(-1)
    w = np.asarray(weights, np.float64).reshape(-1)
    lo, hi = float(bounds[0]), float(bounds[1])
    if r.size == 0 or r.shape != w.shape:
        raise ValueError(f"raw ({r.size}) and weights ({w.size}) must be non-empty and of equal length")
    if not (np.isfinite(r).all() and np.isfinite(w).all() and (w > 0).all()):
        raise ValueError("raw values must be finite and weights finite and positive")
    if not (0.0 <= lo <= hi < 1.0):
        raise ValueError(f"bounds must satisfy 0 <= lo <= hi < 1, got {bounds}")
    if not lo <= target <= hi:
        raise ValueError(f"target sparsity {target} lies outside the bounds [{lo}, {hi}]")
    if mode == "scale" and not (r > 0).all():
        raise ValueError("mode 'scale' needs positive raw values")
    total = w.sum()

    def apply(c: float) -> np.ndarray:
        return r + c if mode == "shift" else r * c

    def mean_at(c: float) -> float:
        return float((w * np.clip(apply(c), lo, hi)).sum() / total)

    # bracket: at c_lo every block is at lo (mean lo <= target), at c_hi every block is at hi
    c_lo, c_hi = (lo - r.max(), hi - r.min()) if mode == "shift" else (lo / r.max(), hi / r.min())
    for _ in range(200):
        mid = 0.5 * (c_lo + c_hi)
        if mid in (c_lo, c_hi):
            break
        if mean_at(mid) < target:
            c_lo = mid
        else:
            c_hi = mid
    c = 0.5 * (c_lo + c_hi)
    # closed form on the free blocks (those strictly inside the bounds at c)
    v = apply(c)
    free = (v > lo) & (v < hi)
    if free.any():
        clipped = np.clip(v, lo, hi)
        rest = (w[~free] * clipped[~free]).sum()
        if mode == "shift":
            exact = (target * total - rest - (w[free] * r[free]).sum()) / w[free].sum()
        else:
            exact = (target * total - rest) / (w[free] * r[free]).sum()
        if abs(mean_at(exact) - target) <= abs(mean_at(c) - target):
            c = exact
    # snap to 1e-12 so that a uniform allocation comes out as exactly the target (a value one ulp
    # below 0.5 would prune int(576 * 0.49999999999999994) = 287 weights of a 576-wide row, not 288)
    return [float(x) for x in np.clip(np.round(np.clip(apply(c), lo, hi), 12), lo, hi)]


def owl_sparsities(
    outlier_ratios: ArrayLike,
    weights: ArrayLike,
    target: float,
    lam: float,
    *,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> list[float]:
    """OWL: ``s_l = s - (D~_l - mean D~)`` with ``D~`` = the outlier ratios min-max scaled to
    ``[0, 2 lam]`` (blocks with more outliers are pruned less).

    As the reference (which takes the plain mean over blocks, all of equal size there) up to the
    parameter weighting and the clip to ``bounds``; all-equal ratios give the uniform allocation.
    """
    d = np.asarray(outlier_ratios, np.float64)
    if not np.isfinite(d).all():
        raise ValueError("outlier ratios must be finite")
    if lam < 0:
        raise ValueError(f"lambda must be >= 0, got {lam}")
    span = d.max() - d.min()
    scaled = (d - d.min()) / span * (2.0 * lam) if span > 0 else np.zeros_like(d)
    return match_target(-scaled, weights, target, bounds=bounds, mode="shift")


def alpha_sparsities(
    block_alpha: ArrayLike,
    weights: ArrayLike,
    target: float,
    eps: float,
    *,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> list[float]:
    """AlphaPruning: block alpha mapped linearly onto ``[(1 - eps) s, (1 + eps) s]`` (higher
    alpha = less heavy-tailed = less trained structure = pruned more), then scaled so that the
    parameter-weighted mean is ``s`` (the reference's ``scaler``), clipped to ``bounds``.
    """
    a = np.asarray(block_alpha, np.float64)
    if not np.isfinite(a).all():
        raise ValueError("block alphas must be finite")
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    span = a.max() - a.min()
    factors = 1.0 - eps + (a - a.min()) / span * (2.0 * eps) if span > 0 else np.ones_like(a)
    return match_target(factors, weights, target, bounds=bounds, mode="scale")


def offset_sparsities(
    offsets: ArrayLike, weights: ArrayLike, target: float, *, bounds: tuple[float, float] = DEFAULT_BOUNDS
) -> list[float]:
    """``s_l = clip(s + o_l + c)`` with the shift ``c`` that restores the target exactly."""
    return match_target(np.asarray(offsets, np.float64), weights, target, bounds=bounds, mode="shift")


def depth_schedule(a: float, b: float, n_blocks: int) -> np.ndarray:
    """``a (t - 1/2) + b (t^2 - 1/3)`` at ``t = l / (L - 1)``: a linear and a quadratic trend
    over depth, each of zero mean over continuous t in [0, 1] (all zeros when L == 1)."""
    t = np.arange(n_blocks, dtype=np.float64) / max(n_blocks - 1, 1)
    return a * (t - 0.5) + b * (t * t - 1.0 / 3.0)


def depth_sparsities(
    a: float, b: float, weights: ArrayLike, target: float, *, bounds: tuple[float, float] = DEFAULT_BOUNDS
) -> list[float]:
    """Smooth depth schedule ``s + a (t - 1/2) + b (t^2 - 1/3)``, renormalised to the target."""
    w = np.asarray(weights, np.float64)
    return match_target(depth_schedule(a, b, w.size), w, target, bounds=bounds, mode="shift")
