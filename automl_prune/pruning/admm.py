"""ADMM weight update (Boza 2024, "Fast and Effective Weight Update for Pruned Large Language
Models"), pure tensor maths.

Minimises the layer's output error over weights restricted to a mask,

    min_W  ||X W0^T - X W^T||_F^2 + damp ||W0 - W||_F^2   subject to  W_ij = 0 where pruned,

by ADMM on the split W = Z (Z carries the mask). Follows the reference ``AdmmPruner.fasterprune``
(fmfi-compbio/admm-pruning, ``lib/admm.py``):

1. Normalise the problem: n_j = sqrt(G_jj) + 1e-8 with G = X^T X; G' = G / (n n^T), W' = W * n
   (column scaling), so that G' has a unit diagonal and |W'| is Wanda's score.
2. Damping ``damping * mean(diag G')`` on the diagonal (0.1 in the paper); XY = W' G'_damped.
3. A = G'_damped + rho I (rho = 1), inverted once (Cholesky).
4. U = 0; for each iteration: [gradual: choose the mask from the current iterate]; Z = (W' + U)
   masked; U += W' - Z; W' = (XY + rho (Z - U)) A^-1.
5. The result is the last Z, unscaled: exact zeros wherever the mask prunes.

Gradual mask selection (optional): during the first ``gradual_iterations`` iterations the mask is
re-chosen from the iterate W' + U at the cubic schedule s_t = s (1 - (1 - (t + 1) / T)^3), by the
caller's ``select`` function (which applies the plan's metric and pattern to a weight). After that
the mask is fixed. Deviation from the reference: its unstructured gradual path passes the final
sparsity to ``topk`` at every step, so its schedule does nothing; here the schedule is applied as
the paper describes. Without ``select`` the given mask is kept from the start (the update only).

Everything runs in float32 on the weight's device; one Gram matrix at a time.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch


class AdmmResult(NamedTuple):
    weight: torch.Tensor  # float32 (out, in): zero where mask is True
    mask: torch.Tensor  # bool (out, in), True = pruned
    info: dict[str, Any]


def cubic_schedule(step: int, total: int) -> float:
    """Fraction of the final sparsity reached after ``step + 1`` of ``total`` selection steps."""
    return 1.0 - (1.0 - (step + 1) / total) ** 3


def _inverse(M: torch.Tensor) -> torch.Tensor:
    """The inverse of a symmetric positive definite matrix (Cholesky)."""
    L, err = torch.linalg.cholesky_ex(M)
    if int(err) != 0:
        raise ValueError("ADMM: the damped Gram matrix is not positive definite")
    return torch.cholesky_inverse(L)


def admm_prune(
    weight: torch.Tensor,
    gram: torch.Tensor,
    mask: torch.Tensor,
    *,
    select: Callable[[torch.Tensor, float], torch.Tensor] | None = None,
    iterations: int = 20,
    rho: float = 1.0,
    damping: float = 0.1,
    gradual_iterations: int = 15,
    gradual_score: str = "metric",
) -> AdmmResult:
    """ADMM update of ``weight`` (out, in) under ``mask`` (bool, True = pruned), given the Gram
    matrix X^T X (in, in) of the layer's calibration inputs.

    With ``select(w, fraction) -> mask`` the mask is re-chosen from the iterate (in the original
    weight scale) at ``fraction`` of the final sparsity during the first ``gradual_iterations``
    iterations, ending with ``fraction = 1``; ``mask`` is then only the starting point. With
    ``gradual_score="obs"`` ``select`` sees the iterate's columns divided by sqrt([G'^-1]_jj) (G'
    the damped normalised Gram matrix): a magnitude-times-norm metric then ranks by the OBS
    saliency w'^2 / [G'^-1]_jj.
    """
    if gradual_score not in ("metric", "obs"):
        raise ValueError(f"gradual_score must be 'metric' or 'obs', got {gradual_score!r}")
    if iterations < 1:
        raise ValueError(f"ADMM needs at least 1 iteration, got {iterations}")
    if rho <= 0 or damping < 0:
        raise ValueError(f"ADMM needs rho > 0 and damping >= 0, got rho={rho}, damping={damping}")
    W0 = weight.detach().to(torch.float32)
    rows, cols = W0.shape
    if gram.shape != (cols, cols):
        raise ValueError(f"the Gram matrix must be ({cols}, {cols}) for in_features={cols}, got {tuple(gram.shape)}")
    if mask.shape != W0.shape or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor of shape {tuple(W0.shape)}")
    G = gram.detach().to(W0.device, torch.float32)
    norm = torch.diag(G).clamp_min(0).sqrt() + 1e-8
    Gn = G / norm.unsqueeze(0) / norm.unsqueeze(1)
    damp = damping * float(torch.diag(Gn).mean())
    Gn.diagonal().add_(damp)
    W = W0 * norm  # normalised weights, (out, in)
    XY = W @ Gn  # Gn is symmetric
    scale = norm
    if select is not None and gradual_score == "obs":
        scale = norm * torch.diag(_inverse(Gn)).clamp_min(1e-12).sqrt()
    Gn.diagonal().add_(rho)
    Ainv = _inverse(Gn)
    del Gn

    keep = ~mask.to(W.device)
    U = torch.zeros_like(W)
    selecting = select is not None and gradual_iterations > 0
    steps = min(gradual_iterations, iterations)  # the last selection step reaches the full sparsity
    for it in range(iterations):
        if selecting and it < steps:
            keep = ~select((W + U) / scale, cubic_schedule(it, steps))
        Z = (W + U) * keep
        U = U + (W - Z)
        W = (XY + rho * (Z - U)) @ Ainv
    out = (W + U) * keep / norm  # exact zeros where pruned
    info = {"iterations": iterations, "rho": rho, "damping": damping, "gradual": bool(selecting)}
    if selecting and gradual_score != "metric":
        info["gradual_score"] = gradual_score
    return AdmmResult(out, ~keep, info)

