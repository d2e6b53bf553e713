"""The scoring kernel: one pure function from (metric spec, weight, input statistics) to scores.

``score(metric, W, stats)`` returns a float32 tensor shaped like ``W`` (out, in) on W's device;
the lowest scores are pruned (see ``automl_prune.pruning.masks``). Per-channel statistics are
read in float64 from :class:`LinearStats` and cast to float32 only once they are final vectors;
the (out, in)-sized maths is float32, like the reference implementations.

Notation: W (out x in), A = |W|, r_i / k_j row / column norms of W, x_j = Wanda's
``scaler_row`` (sum of squares / number of sequences), ||X_j||_2 = sqrt(sum of squares).

Guards (finite inputs give finite scores; the caller still checks for NaN/inf):

- in RIA and BaWA a row/column sum or norm that is exactly 0 belongs to an all-zero row/column,
  whose scores are then 0 (the reference's 0/0 = NaN);
- OptiShear coefficients use 1 / max(d, 1e-12); its ``log`` is log(t + 1e-12) and its ``exp``
  is exp(t - max t) (see :func:`_transform`).

OptiShear reference: the released code (Liu et al. 2025, arXiv 2502.10735) is not in the code
index we could search, so the operator semantics follow the design notes (section 4) and the
paper: F in {identity, sqrt, square, exp, log, sigmoid, softmax(dim=1)} applied to |W| and to
sqrt(scaler_row); C in {1, 1/row-sum, 1/column-sum, 1/(row-sum + column-sum), 1/total-sum,
1/mean, 1/Frobenius} computed from |W| and from scaler_row (treated, as in Wanda's code, as a
(1, in) row). Where the released code differs in a detail (the softmax axis, coefficients taken
before/after the transform), this function is the place to change.
"""

from __future__ import annotations

import torch

from automl_prune.calibration.stats import LinearStats
from automl_prune.metrics.spec import (
    BaWAMetric,
    MagnitudeMetric,
    MetricSpec,
    OptiShearMetric,
    RIAMetric,
    StadeMetric,
    WandaMetric,
)

EPS = 1e-12  # OptiShear: log(t + EPS) and 1 / max(d, EPS)

# Comparison group each method uses in its reference code (design section 3).
_DEFAULT_GROUP = {
    "magnitude": "matrix",
    "ria": "matrix",
    "wanda": "row",
    "stade": "row",
    "bawa": "row",
    "optishear": "row",
}


def default_group(metric: MetricSpec) -> str:
    """The comparison group of ``metric``'s reference: "row" or "matrix"."""
    return _DEFAULT_GROUP[metric.name]


def requires_stats(metric: MetricSpec) -> bool:
    """False only for magnitude, which needs no calibration statistics."""
    return not isinstance(metric, MagnitudeMetric)


def score(metric: MetricSpec, weight: torch.Tensor, stats: LinearStats | None = None) -> torch.Tensor:
    """Scores (float32, shape of ``weight``) of ``metric`` for the linear weight (out, in)."""
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    A = weight.detach().abs().float()
    if isinstance(metric, MagnitudeMetric):
        return A
    if stats is None:
        raise ValueError(f"metric {metric.name!r} needs calibration statistics (stats=None given)")
    if stats.in_features != weight.shape[1]:
        raise ValueError(
            f"stats have {stats.in_features} input channels but the weight has in_features={weight.shape[1]}"
        )

    def vec(t: torch.Tensor) -> torch.Tensor:  # per-channel float64 statistic -> float32 row (1, in)
        return t.to(device=weight.device, dtype=torch.float32).reshape(1, -1)

    # A is this function's own tensor: the products below run in place (the same operations in the
    # same order, so the same bits, without allocating a matrix per factor)
    if isinstance(metric, WandaMetric):
        return A.mul_(vec(stats.l2))
    if isinstance(metric, StadeMetric):
        return A.mul_(vec(stats.std))
    if isinstance(metric, RIAMetric):
        # as the reference: (A / column sums + A / row sums) * sqrt(scaler_row) ** a
        relative = A / _nonzero(A.sum(0, keepdim=True)) + A / _nonzero(A.sum(1, keepdim=True))
        return relative * vec(stats.scaler_row.sqrt().pow(metric.a))
    if isinstance(metric, BaWAMetric):
        return _bawa(metric, A, stats)
    if isinstance(metric, OptiShearMetric):
        return _optishear(metric, A, stats.scaler_row.to(weight.device))
    raise ValueError(f"unknown metric spec {metric!r}")


# ----- helpers -----------------------------------------------------------------------------------
def _nonzero(d: torch.Tensor) -> torch.Tensor:
    """Denominator guard: a zero sum (all-zero row/column, numerator 0 too) becomes 1, so 0/0 -> 0."""
    return torch.where(d > 0, d, torch.ones_like(d))


def _inv_pow(v: torch.Tensor, p: float) -> torch.Tensor:
    """v ** -p elementwise, with 0 where v == 0 (a zero norm means an all-zero row/column)."""
    v = v.double()
    return torch.where(v > 0, v.clamp_min(torch.finfo(torch.float64).tiny).pow(-p), torch.zeros_like(v))


def _bawa(metric: BaWAMetric, A: torch.Tensor, stats: LinearStats) -> torch.Tensor:
    ord_ = 1 if metric.norm == "l1" else 2
    # (float64 sums would be 2x faster for L1 but add in another order: not always the same bits)
    r = torch.linalg.vector_norm(A, ord=ord_, dim=1, dtype=torch.float64)  # (out,)
    k = torch.linalg.vector_norm(A, ord=ord_, dim=0, dtype=torch.float64)  # (in,)
    inv_r = _inv_pow(r, metric.alpha).float().reshape(-1, 1)
    inv_k = _inv_pow(k, metric.beta).float().reshape(1, -1)
    a = stats.activation(metric.activation).to(A.device, torch.float64)
    if metric.clip_quantile is not None:
        a = a.clamp(max=torch.quantile(a, metric.clip_quantile))  # outlier clipping before the power
    act = a.pow(metric.gamma).float().reshape(1, -1)  # gamma >= 0; 0 ** 0 = 1
    if metric.form == "sum":  # (A * (inv_r + inv_k)) * act; IEEE products commute
        return (inv_r + inv_k).mul_(A).mul_(act)
    return A.mul_(inv_r).mul_(inv_k).mul_(act)  # ((A * inv_r) * inv_k) * act, A no longer needed


# ----- OptiShear -------------------------------------------------------------------------------------
def _transform(t: torch.Tensor, op: str) -> torch.Tensor:
    """F(t) for t >= 0 of shape (rows, in); softmax runs over the last (input-channel) dim.

    Deviations from the released operators, both ranking-neutral for finite inputs:
    ``log``: log(t + 1e-12) instead of log(t), which maps 0 to -inf (-27.6 here instead);
    ``exp``: exp(t - max t) instead of exp(t): a positive factor common to the whole matrix /
    activation vector, so no mask changes, and exp never overflows.
    """
    if op == "identity":
        return t
    if op == "sqrt":
        return t.sqrt()
    if op == "square":
        return t * t
    if op == "exp":
        return torch.exp(t - t.max())
    if op == "log":
        return torch.log(t + EPS)
    if op == "sigmoid":
        return torch.sigmoid(t)
    if op == "softmax":
        return torch.softmax(t, dim=-1)
    raise ValueError(f"unknown OptiShear transform {op!r}")


def _coefficient(u: torch.Tensor, op: str) -> torch.Tensor | float:
    """C(u) for u >= 0 of shape (rows, in): 1 or 1 / (a sum or norm of u), broadcastable to u."""
    if op == "none":
        return 1.0
    if op == "row_sum":
        d = u.sum(dim=1, keepdim=True)  # (rows, 1)
    elif op == "column_sum":
        d = u.sum(dim=0, keepdim=True)  # (1, in)
    elif op == "row_column_sum":
        d = u.sum(dim=1, keepdim=True) + u.sum(dim=0, keepdim=True)  # (rows, in)
    elif op == "total_sum":
        d = u.sum()
    elif op == "mean":
        d = u.mean()
    elif op == "frobenius":
        d = torch.linalg.vector_norm(u)
    else:
        raise ValueError(f"unknown OptiShear coefficient {op!r}")
    return 1.0 / d.clamp_min(EPS)


def _optishear(metric: OptiShearMetric, A: torch.Tensor, scaler_row: torch.Tensor) -> torch.Tensor:
    """S = [C_W(|W|) * F_W(|W|)] * [C_X(x) * F_X(sqrt x)], x = scaler_row as a (1, in) row.

    The weight side is an (out, in) matrix: row_sum = 1 / sum over inputs, column_sum = 1 / sum
    over outputs, softmax over the inputs of each row. The activation side is the (1, in) row
    vector x (Wanda's ``scaler_row.reshape(1, -1)``), so for it row_sum = total_sum = 1 / sum_j x_j,
    column_sum = 1 / x_j, row_column_sum = 1 / (sum_k x_k + x_j), softmax over the channels.
    The coefficient sees x itself, the transform sqrt(x) (= ||X_j||_2 / sqrt(n_seqs)).
    Activation-side maths is float64, then cast to float32.
    """
    w_side = _coefficient(A, metric.c_w) * _transform(A, metric.f_w)
    x = scaler_row.double().reshape(1, -1)
    x_side = _coefficient(x, metric.c_x) * _transform(x.sqrt(), metric.f_x)
    return w_side * x_side.float()
