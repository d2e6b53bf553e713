"""Heavy-tail exponent of a weight matrix's empirical spectral density (AlphaPruning's metric).

For W (out x in) the eigenvalues of W^T W are the squared singular values of W. Their upper tail
is fitted by a power law p(x) ~ x^-alpha for x >= xmin, with the Hill (maximum-likelihood)
estimator ``alpha = 1 + n / sum_{k} log(x_k / xmin)`` over the n eigenvalues >= xmin, and xmin
chosen among the eigenvalues by the smallest Kolmogorov-Smirnov distance between the fitted and
the empirical tail CDF: exactly the ``net_esd_estimator(fix_fingers='xmin_peak')`` procedure of
the AlphaPruning code (``lib/esd_utils.py``, itself a torch port of WeightWatcher's fit), written
anew and vectorised here.

Candidate xmin window (``window``):

- ``"alphapruning"`` (default, reproduces the released code): a histogram of log10 of the
  eigenvalues (100 bins); the left edge of the fullest bin is the "peak" p; candidates are the
  eigenvalues up to 1.5 p whose value is >= log10(0.95 p). That lower test compares an eigenvalue
  with a *logarithm* (a slip in the released code), so in practice the window reaches down to
  the smallest eigenvalues whenever p < 1.05; we keep it because the published allocations were
  computed with it.
- ``"peak"``: the intended window, eigenvalues in [0.95 p, 1.5 p].
- ``"all"``: every eigenvalue but the largest (classic Clauset-Shalizi-Newman fit).

Candidates whose alpha is <= 1 are never chosen (the reference leaves their KS distance at 1).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Window = Literal["alphapruning", "peak", "all"]


def hill_alpha(eigs: np.ndarray | torch.Tensor, *, window: Window = "alphapruning", bins: int = 100) -> tuple[float, float, float]:
    """``(alpha, xmin, ks_distance)`` of the power-law fit to the upper tail of ``eigs`` (> 0).

    Raises ValueError with fewer than 2 positive values.
    """
    x = np.asarray(eigs.detach().cpu().double() if isinstance(eigs, torch.Tensor) else eigs, dtype=np.float64).reshape(-1)
    x = np.sort(x[np.isfinite(x) & (x > 0)])
    n_all = x.size
    if n_all < 2:
        raise ValueError(f"need at least 2 positive eigenvalues, got {n_all}")
    logx = np.log(x)

    cand = np.arange(n_all - 1)  # xmin = x[i] for i < N - 1 (the reference's eigs[:-1])
    if window != "all":
        log10x = np.log10(x)
        counts, edges = np.histogram(log10x, bins=bins, range=(log10x.min(), log10x.max()))
        peak = 10.0 ** edges[int(np.argmax(counts))]
        upper = 1.5 * peak
        lower = np.log10(0.95 * peak) if window == "alphapruning" else 0.95 * peak
        xc = x[cand]
        # the reference skips (continue) below `lower` and stops (break) at the first value above `upper`
        cand = cand[(xc >= lower) & (np.cumsum(xc > upper) == 0)]
        if cand.size == 0:  # the reference would return alpha = 0 here; fall back to all candidates
            cand = np.arange(n_all - 1)

    # Hill estimate for every candidate at once: n_i = N - i, suffix sums of log x
    suffix = np.cumsum(logx[::-1])[::-1]
    n = (n_all - cand).astype(np.float64)
    denom = suffix[cand] - n * logx[cand]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = np.where(denom > 0, 1.0 + n / denom, np.inf)

    # KS distance max_k |1 - (x_{i+k} / x_i)^(1 - alpha) - k / n| over the tail of each candidate
    ks = np.ones(cand.size)
    for chunk in np.array_split(np.arange(cand.size), max(1, cand.size * n_all // 2_000_000 + 1)):
        ii = cand[chunk][:, None]  # (c, 1)
        j = np.arange(n_all)[None, :]  # (1, N)
        k = j - ii
        valid = k >= 0
        a = alpha[chunk][:, None]
        with np.errstate(over="ignore", invalid="ignore"):
            cdf = 1.0 - np.exp((1.0 - a) * (logx[None, :] - logx[ii]))
        emp = k / n[chunk][:, None]
        dist = np.where(valid, np.abs(cdf - emp), 0.0)
        d = dist.max(axis=1)
        ks[chunk] = np.where(np.isfinite(alpha[chunk]) & (alpha[chunk] > 1), d, 1.0)
    best = int(np.argmin(ks))  # first minimum, as torch.argmin
    return float(alpha[best]), float(x[cand[best]]), float(ks[best])


@torch.no_grad()
def esd_alpha(weight: torch.Tensor, *, window: Window = "alphapruning") -> float:
    """Power-law exponent of the eigenvalues of W^T W (squared singular values of W, float32
    as in the reference)."""
    eigs = torch.linalg.svdvals(weight.detach().float()).square()
    return hill_alpha(eigs, window=window)[0]
