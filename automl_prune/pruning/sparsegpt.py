"""SparseGPT (Frantar & Alistarh 2023): mask selection plus OBS weight update, pure tensor maths.

Follows the reference ``SparseGPT.fasterprune`` (IST-DASLab/sparsegpt, ``sparsegpt.py``):

1. H = 2 X^T X / n. The reference keeps a running average in which n counts the *samples*
   (calibration sequences, ``inp.shape[0]`` of each batch), not tokens, so we build
   H = 2 * gram / n_seqs (:func:`hessian_from_stats`). The scale only matters through the
   damping, which is relative to mean(diag H), so any n gives the same result.
2. Dead inputs (H_jj == 0) get H_jj = 1 and W[:, j] = 0.
3. Damping ``percdamp * mean(diag H)`` on the diagonal; Hinv = upper Cholesky factor of H^-1.
4. Columns in blocks of ``blocksize`` (128). At the start of each block the mask is chosen from
   the saliency W^2 / diag(Hinv)^2 of the current (already updated) block weights: the lowest
   ``int(rows * width * sparsity)`` over the whole block (all rows jointly). For N:M the choice
   is made per group of M columns when the sweep reaches the group, from the weights updated so
   far, as the reference does with ``prunen``/``prunem``.
5. Column by column: zero the pruned weights, propagate the error
   ``(w - q) / Hinv_ii * Hinv[i, i:]`` to the later columns of the block, and after the block
   to all remaining columns (``Err1 @ Hinv[block, rest]``).

Deviations from the reference:

- the unstructured block mask prunes exactly ``int(numel * sparsity)`` weights (ties to the lower
  index); the reference's ``tmp <= sort(tmp)[int(numel * sparsity)]`` prunes one more, and more
  on ties;
- N:M follows the NVIDIA convention: ``prune_n`` is the number *kept* of every ``prune_m``; the
  reference's ``prunen`` is the number pruned. 2:4 is the same in both;
- ``mask=`` keeps a given mask fixed and only does the OBS update (the reference's preset-mask
  path), so any metric's mask can be paired with the SparseGPT update;
- a non-positive-definite H does not raise: the damping is multiplied by 10 up to
  ``max_retries`` times; if Cholesky still fails, the mask comes from the saliency
  W^2 * H_jj (the diagonal approximation [H^-1]_jj ~ 1 / H_jj, i.e. Wanda's score squared) with
  no weight update, and ``info["fell_back"]`` is True.

Everything runs in float32 on the weight's device; the returned weight is float32 (the caller
casts back to the model dtype).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from automl_prune.calibration.stats import LinearStats
from automl_prune.pruning.masks import nm_mask, unstructured_mask


class SparseGPTResult(NamedTuple):
    weight: torch.Tensor  # float32 (out, in), pruned and updated
    mask: torch.Tensor  # bool (out, in), True = pruned
    info: dict[str, Any]  # percdamp, damp, attempts, fell_back, reason, n_dead, loss


def hessian_from_stats(stats: LinearStats, device: torch.device | str | None = None) -> torch.Tensor:
    """The reference's H = 2 X^T X / n_samples (float32), from the Gram matrix in ``stats``."""
    if stats.gram is None:
        raise ValueError("SparseGPT needs the Gram matrix X^T X: collect the statistics with with_gram=True")
    H = stats.gram * (2.0 / max(stats.n_seqs, 1))
    return H.to(device=device if device is not None else stats.gram.device, dtype=torch.float32)


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor | LinearStats,
    *,
    sparsity: float = 0.5,
    prune_n: int = 0,
    prune_m: int = 0,
    mask: torch.Tensor | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    max_retries: int = 3,
) -> SparseGPTResult:
    """Prune ``weight`` (out, in) with SparseGPT given H (in, in) or statistics holding the Gram.

    Unstructured at ``sparsity`` when ``prune_n == prune_m == 0``; N:M when both are set, with
    ``prune_n`` = N weights *kept* of every ``prune_m`` = M (NVIDIA convention, as
    :func:`~automl_prune.pruning.masks.parse_pattern` returns them); with ``mask`` (bool,
    True = pruned) that mask is kept, ``sparsity`` / N:M are ignored and only the weights are
    updated. Returns ``(weight, mask, info)``.
    """
    n, m = prune_n, prune_m
    W = weight.detach().to(torch.float32).clone()
    rows, cols = W.shape
    if isinstance(hessian, LinearStats):
        H = hessian_from_stats(hessian, W.device)
    else:
        H = hessian.detach().to(W.device, torch.float32).clone()
    if H.shape != (cols, cols):
        raise ValueError(f"H must be ({cols}, {cols}) for a weight with in_features={cols}, got {tuple(H.shape)}")
    if mask is not None:
        if mask.shape != W.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(W.shape)}")
        mask = mask.to(W.device)
        n = m = 0  # the given mask fixes the pattern
    elif n or m:
        if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
            raise ValueError(f"N:M needs integers 0 < N < M, got {n}:{m}")
        if cols % m:
            raise ValueError(f"N:M {n}:{m} needs in_features divisible by {m}; this layer has in_features={cols}")
        blocksize = max(m, blocksize // m * m)  # groups of M never straddle two blocks
    elif not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")

    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    info: dict[str, Any] = {"n_dead": int(dead.sum()), "fell_back": False, "reason": None}

    Hinv, info_damp = _damped_inverse_cholesky(H, percdamp, max_retries)
    info.update(info_damp)
    if Hinv is None:
        info["fell_back"] = True
        saliency = W**2 * torch.diag(H).clamp_min(0).reshape(1, -1)
        if mask is None:
            mask = nm_mask(saliency, n, m) if n else unstructured_mask(saliency, sparsity, "column_block", blocksize)
        info["loss"] = float("nan")
        return SparseGPTResult(W.masked_fill(mask, 0.0), mask, info)

    full_mask = torch.zeros_like(W, dtype=torch.bool)
    loss = torch.zeros(rows, device=W.device)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        d1 = torch.diag(Hinv1)

        if mask is not None:
            mask1 = mask[:, i1:i2]
        elif n == 0:
            mask1 = unstructured_mask(W1**2 / d1.reshape(1, -1) ** 2, sparsity, group="matrix")
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        for i in range(i2 - i1):
            if n and i % m == 0:
                mask1[:, i : i + m] = nm_mask(W1[:, i : i + m] ** 2 / d1[i : i + m].reshape(1, -1) ** 2, n, m)
            w = W1[:, i]
            d = Hinv1[i, i]
            q = w.masked_fill(mask1[:, i], 0.0)
            Q1[:, i] = q
            loss += (w - q) ** 2 / d**2 / 2
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err

        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
        full_mask[:, i1:i2] = mask1

    info["loss"] = float(loss.sum())
    return SparseGPTResult(W, full_mask, info)


def _damped_inverse_cholesky(
    H: torch.Tensor, percdamp: float, max_retries: int
) -> tuple[torch.Tensor | None, dict[str, Any]]:
    """Upper Cholesky factor of (H + damp I)^-1, retrying with 10x damping; None if it fails."""
    mean_diag = float(torch.diag(H).mean())
    info: dict[str, Any] = {"percdamp": percdamp, "damp": None, "attempts": 0}
    if not (mean_diag > 0 and torch.isfinite(H).all()):
        info["reason"] = f"H is not usable (mean diagonal {mean_diag:.3g}, finite={bool(torch.isfinite(H).all())})"
        return None, info
    pd = percdamp
    for attempt in range(max_retries + 1):
        if attempt:
            pd = max(pd, 1e-2) * 10.0
        damp = pd * mean_diag
        info.update(percdamp=pd, damp=damp, attempts=attempt + 1)
        Hd = H.clone()
        Hd.diagonal().add_(damp)
        L, err = torch.linalg.cholesky_ex(Hd)
        del Hd
        if int(err) == 0 and torch.isfinite(L).all():
            U, err = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(err) == 0 and torch.isfinite(U).all():
                return U, info
    info["reason"] = f"Cholesky failed with damping up to {pd:g} * mean(diag H)"
    return None, info
