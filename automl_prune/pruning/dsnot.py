"""DSnoT mask refinement (Zhang et al. 2024, "Dynamic Sparse No Training"), pure tensor maths.

Training-free: each output row swaps pruned and kept weights so that the expected shift of its
output, e_i = sum over pruned j of W_ij * E[x_j], moves towards zero. Follows the reference
``prune_DSnoT`` (zyxxmu/DSnoT, ``lib/prune.py``), vectorised over rows:

- c_ij = W_ij * mean(x_j); e_i = sum of c_ij over the row's pruned weights.
- Regrow: when e_i > 0 the pruned weight with the largest c_ij / var(x_j)^p, when e_i < 0 the one
  with the smallest (p = ``var_power``, 1 by default): the one that cancels most of the shift per
  unit of input variance.
- Prune in exchange, unstructured: the row's kept weights in one list, those with c_ij < 0 by
  pruning score ascending, then those with c_ij >= 0 by score descending (the plan's metric; the
  reference uses Wanda's); e_i > 0 takes from the front (pruning it lowers e_i), e_i < 0 from the
  back. N:M: the kept weight of the regrown weight's group of M with the lowest score (the pattern
  stays N:M).
- A row stops for good when |e_i| <= ``threshold``, when it runs out of candidates, after
  ``max_cycles`` swaps, and (``same_sign``, always for N:M) when a swap would flip the sign of
  e_i. The reference's unstructured default runs without the sign check (``--without_same_sign``
  defaults to True there), and ``same_sign=False`` is the default here too.
- Layers whose name has a part in ``skip`` keep their mask (the reference skips ``mlp`` layers by
  default; see :class:`~automl_prune.pruning.plan.DsnotOptions`).

Every swap prunes one weight and regrows one in the same row: the number pruned per row, and
N:M validity, never change. Deviation from the reference: its regrowth list also holds the kept
weights (at zero) between the two ends, which it can walk into; here both lists hold only the
weights that can move, and a row whose lists are used up stops.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class DsnotResult(NamedTuple):
    mask: torch.Tensor  # bool (out, in), True = pruned
    swaps: int  # swaps made over all rows
    shift_before: float  # sum over rows of |e_i| before
    shift_after: float  # and after


def dsnot_refine(
    weight: torch.Tensor,
    mask: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    score: torch.Tensor,
    *,
    nm: tuple[int, int] | None = None,
    max_cycles: int = 50,
    threshold: float = 0.1,
    var_power: float = 1.0,
    same_sign: bool = False,
) -> DsnotResult:
    """Refine ``mask`` (bool, True = pruned) of ``weight`` (out, in) given the per-channel mean and
    variance of the layer's inputs and the pruning ``score`` (higher = more important)."""
    W = weight.detach().to(torch.float64)
    out, cols = W.shape
    if mask.shape != W.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(W.shape)}")
    if score.shape != W.shape:
        raise ValueError(f"score must have the weight's shape {tuple(W.shape)}, got {tuple(score.shape)}")
    if max_cycles < 0 or threshold < 0:
        raise ValueError(f"DSnoT needs max_cycles >= 0 and threshold >= 0, got {max_cycles}, {threshold}")
    dev = W.device
    pruned = mask.to(dev).clone()
    c = W * mean.to(dev, torch.float64).reshape(1, -1)
    e = (c * pruned).sum(1)
    shift_before = float(e.abs().sum())
    sign0 = torch.sign(e)
    v = var.to(dev, torch.float64).clamp_min(1e-12).reshape(1, -1) ** var_power
    rows = torch.arange(out, device=dev)
    inf = torch.full_like(c, torch.inf)

    # regrowth: the row's pruned weights by c / var^p ascending; e < 0 takes from the front, e > 0 from the back
    grow_order = torch.argsort(torch.where(pruned, c / v, inf), dim=1, stable=True)
    n_grow = pruned.sum(1)
    grow_lo, grow_hi = torch.zeros_like(n_grow), n_grow - 1
    s = score.detach().to(dev, torch.float64)
    if nm is None:
        # kept weights: opposite-to-positive (c < 0) by score ascending, then c >= 0 by score descending;
        # e > 0 prunes from the front (c < 0, lowest score), e < 0 from the back (c >= 0, lowest score)
        key = torch.where(c < 0, s - s.max() - 1.0, s.max() - s + 1.0)  # negatives first, each part ordered
        prune_order = torch.argsort(torch.where(~pruned, key, inf), dim=1, stable=True)
        n_kept = (~pruned).sum(1)
        prune_lo, prune_hi = torch.zeros_like(n_kept), n_kept - 1
    else:
        m = nm[1]
        if cols % m:
            raise ValueError(f"N:M {nm[0]}:{m} needs in_features divisible by {m}; got {cols}")
        live = torch.where(pruned, inf, s)  # kept weights that may be pruned
        same_sign = True

    active = e.abs() > threshold
    swaps = 0
    for _ in range(max_cycles):
        if not bool(active.any()):
            break
        positive = e > 0
        ok = active & (grow_lo <= grow_hi)
        g = grow_order[rows, torch.where(positive, grow_hi, grow_lo).clamp(0, cols - 1)]
        if nm is None:
            ok &= prune_lo <= prune_hi
            p = prune_order[rows, torch.where(positive, prune_lo, prune_hi).clamp(0, cols - 1)]
        else:
            start = g - g % m
            group = start.unsqueeze(1) + torch.arange(m, device=dev).unsqueeze(0)
            cand = live.gather(1, group)
            best = cand.argmin(1)
            ok &= torch.isfinite(cand.gather(1, best.unsqueeze(1)).squeeze(1))
            p = start + best
        e_after = e - c[rows, g] + c[rows, p]
        if same_sign:
            ok &= torch.sign(e_after) == sign0
        # the lists advance on the side used, as in the reference
        grow_hi = torch.where(positive, grow_hi - 1, grow_hi)
        grow_lo = torch.where(positive, grow_lo, grow_lo + 1)
        if nm is None:
            prune_lo = torch.where(positive, prune_lo + 1, prune_lo)
            prune_hi = torch.where(positive, prune_hi, prune_hi - 1)
        r = rows[ok]
        pruned[r, g[ok]] = False
        pruned[r, p[ok]] = True
        if nm is not None:
            live[r, p[ok]] = torch.inf
        e = torch.where(ok, e_after, e)
        swaps += int(ok.sum())
        active = ok & (e.abs() > threshold)
    return DsnotResult(pruned, swaps, shift_before, float(e.abs().sum()))
