"""Canonical form of a metric under its ranking: equal forms give identical masks.

A mask depends on the score only through the order of the scores inside each comparison group
(ties go to the lower index). Ranking is ``"row"`` (per output row), ``"matrix"`` (whole matrix)
or ``"nm"`` (each group of M consecutive inputs *within a row*). Two facts give every reduction:

(F1) multiplying all scores of a group by the same positive number keeps their order, so a
     positive factor constant within a row drops out under ``row``/``nm`` ranking, and a positive
     factor constant over the matrix drops out under any ranking (negative scores included);
(F2) a strictly increasing map applied to every score keeps every order and every tie, so for
     non-negative scores S and p > 0, S and S^p rank identically under any ranking.

The canonical forms (``metric_form``):

- ``("pow", alpha, beta, gamma, norm, act, clip, zero)``: scores ``|W| r_i^-alpha k_j^-beta
  a_j^gamma``: BaWA's product form, Wanda, STADE, magnitude, and every OptiShear combination
  made only of powers (see ``_optishear_power``). ``zero`` marks "a channel whose statistic is 0
  scores 0 even at gamma = 0" (OptiShear's power forms), kept only when gamma = 0; it is ``false``
  or the exponent 1/q of the weight side (see R13: near-zero channels).
- ``("sum", alpha, beta, gamma, norm, act, clip)``: BaWA's sum form ``|W| (r^-alpha + k^-beta)
  a^gamma`` and RIA, where they do not reduce to a power form.
- ``("optishear", f_w, c_w, f_x, c_x)``: the other OptiShear combinations.

Reductions (each with its proof):

R1  BaWA/RIA activation ``rms`` -> ``l2``: rms_j = ||X_j||_2 / sqrt(n_tokens), a positive
    constant c; (c a)^gamma = c^gamma a^gamma (F1), and quantile(c a) = c quantile(a), so the
    clip commutes.
R2  clip quantile >= 1 -> no clip: the 1-quantile is the maximum, clamping at it changes nothing.
R3  gamma = 0 -> activation and clip dropped: a^0 = 1 for every a (torch: 0^0 = 1).
R4  sum form with alpha = beta = 0 -> power form: |W| (1 + 1) a^gamma = 2 x power form (F1).
R5  sum form with beta = 0 under row/nm -> power form with alpha = beta = 0: the factor
    (r_i^-alpha + 1) is positive and constant within row i (F1).
R6  power form under row/nm -> alpha = 0: r_i^-alpha is constant within row i (F1).
R7  power form with alpha = beta = 0 -> norm dropped: no norm is computed.
R8  Wanda = pow(0, 0, 1, act l2); STADE = pow(0, 0, 1, act std); magnitude = pow(0, 0, 0);
    RIA(a) = sum(1, 1, a, l1, act l2): RIA's sqrt(scaler_row)^a = (||X||_2 / sqrt(n_seqs))^a (F1).
R9  OptiShear C_X in {none, row_sum, total_sum, mean, frobenius} -> none: x is one (1, in) row
    shared by all weights, so each is one positive number for the whole matrix (F1).
R10 OptiShear C_W in {total_sum, mean, frobenius} -> none (F1, constant over the matrix);
    C_W row_sum -> none under row/nm (F1, constant within a row).
R11 OptiShear F_X softmax -> exp: softmax(u)_j = exp(u_j - max u) / sum_k exp(u_k - max u), the
    kernel's exp is exp(u_j - max u): they differ by one positive number (F1).
R12 OptiShear F_W softmax -> exp under row/nm: softmax over a row = exp(A_ij - max A) times a
    positive constant of row i (F1); C_W is computed from |W|, not from F_W(|W|), so unchanged.
R13 OptiShear power forms -> pow: with F_W(A) = A^q, F_X(u) = u^p (q, p in {1/2, 1, 2}),
    C_W in {none, global, row_sum = 1/r1_i, column_sum = 1/k1_j} and C_X in {none, global,
    column_sum = 1/x_j = u_j^-2}, the score is a positive constant times
    A^q r1_i^-[row] k1_j^-[col] u_j^(p - 2[col_x]) >= 0; raising it to 1/q (F2) gives
    pow(alpha=[row]/q, beta=[col]/q, gamma=(p - 2[col_x])/q, norm l1, act l2), with u = sqrt(x)
    = ||X||_2 / sqrt(n_seqs) (F1). Zero cases agree: a zero row/column of W has A = 0 (scores 0
    in both kernels); a zero channel scores 0 in OptiShear (F_X(0) = 0) and in BaWA when
    gamma > 0; at gamma = 0 BaWA gives it |W|, hence the ``zero`` flag. Near-zero channels: the
    kernel's C_X column_sum is 1 / max(x_j, 1e-12), so a channel with 0 < x_j < 1e-12 scores
    A^q x_j 1e12 u_j^(p-2) instead of A^q u_j^(p-2); with gamma < 0 every (q, p) has its own
    gamma, but gamma = 0 (p = 2) is reached by q = 1/2, 1 and 2, whose masks then differ on such
    a channel (A x_j^(1/q) ranks differently for each q): the ``zero`` flag holds 1/q.

Not reduced, on purpose: a common scaling of (beta, gamma) in the power form (|W| keeps
exponent 1, so F2 would change it); F_X/F_W monotone transforms other than powers (the score
multiplies them with W-dependent terms); anything under ``matrix`` ranking but global constants.
Floats in keys are rounded to 6 significant digits, so candidates closer than that share a key.
"""

from __future__ import annotations

import json
from typing import Any

from automl_prune.metrics.spec import (
    BaWAMetric,
    MagnitudeMetric,
    MetricSpec,
    OptiShearMetric,
    RIAMetric,
    StadeMetric,
    WandaMetric,
)

from .parts import rounded

_POWERS = {"identity": 1.0, "sqrt": 0.5, "square": 2.0}
_GLOBAL_X = {"none", "row_sum", "total_sum", "mean", "frobenius"}
_GLOBAL_W = {"none", "total_sum", "mean", "frobenius"}


def metric_form(metric: MetricSpec, ranking: str) -> tuple:
    """The canonical form of ``metric`` under ``ranking`` ("row", "matrix" or "nm")."""
    if ranking not in ("row", "matrix", "nm"):
        raise ValueError(f"unknown ranking {ranking!r}")
    rowwise = ranking != "matrix"
    if isinstance(metric, MagnitudeMetric):  # R8
        return _reduce("product", 0.0, 0.0, 0.0, None, None, None, False, rowwise)
    if isinstance(metric, WandaMetric):
        return _reduce("product", 0.0, 0.0, 1.0, None, "l2", None, False, rowwise)
    if isinstance(metric, StadeMetric):
        return _reduce("product", 0.0, 0.0, 1.0, None, "std", None, False, rowwise)
    if isinstance(metric, RIAMetric):
        return _reduce("sum", 1.0, 1.0, metric.a, "l1", "l2", None, False, rowwise)
    if isinstance(metric, BaWAMetric):
        return _reduce(metric.form, metric.alpha, metric.beta, metric.gamma, metric.norm, metric.activation,
                       metric.clip_quantile, False, rowwise)
    if isinstance(metric, OptiShearMetric):
        power = _optishear_power(metric)
        if power is not None:
            return _reduce("product", *power, None, 1.0 / _POWERS[metric.f_w], rowwise)  # zero flag: 1/q
        c_x = "none" if metric.c_x in _GLOBAL_X else metric.c_x  # R9
        c_w = "none" if metric.c_w in _GLOBAL_W or (rowwise and metric.c_w == "row_sum") else metric.c_w  # R10
        f_x = "exp" if metric.f_x == "softmax" else metric.f_x  # R11
        f_w = "exp" if rowwise and metric.f_w == "softmax" else metric.f_w  # R12
        return ("optishear", f_w, c_w, f_x, c_x)
    raise ValueError(f"no canonical form for metric {metric!r}")


def metric_key(metric: MetricSpec, ranking: str) -> str:
    """``metric_form`` with the ranking, as a compact JSON string."""
    return json.dumps([ranking, list(metric_form(metric, ranking))], separators=(",", ":"))


def _optishear_power(m: OptiShearMetric) -> tuple | None:
    """R13: (alpha, beta, gamma, norm, act) of an OptiShear power form, else None."""
    if m.f_w not in _POWERS or m.f_x not in _POWERS:
        return None
    if m.c_w not in _GLOBAL_W | {"row_sum", "column_sum"} or m.c_x not in _GLOBAL_X | {"column_sum"}:
        return None
    q, p = _POWERS[m.f_w], _POWERS[m.f_x]
    alpha = (1.0 if m.c_w == "row_sum" else 0.0) / q
    beta = (1.0 if m.c_w == "column_sum" else 0.0) / q
    gamma = (p - (2.0 if m.c_x == "column_sum" else 0.0)) / q
    return alpha, beta, gamma, "l1", "l2"


def _reduce(form: str, alpha: float, beta: float, gamma: float, norm: Any, act: Any, clip: Any,
            zero: float, rowwise: bool) -> tuple:
    if act == "rms":  # R1
        act = "l2"
    if clip is not None and clip >= 1.0:  # R2
        clip = None
    if form == "sum":
        if alpha == 0 and beta == 0:  # R4
            form = "product"
        elif beta == 0 and rowwise:  # R5
            form, alpha = "product", 0.0
    if form == "product":
        if rowwise:  # R6
            alpha = 0.0
        if alpha == 0 and beta == 0:  # R7
            norm = None
    if gamma == 0:  # R3 (OptiShear's zero flag keeps act: which channels are zero)
        clip = None
        if not zero:
            act = None
    zero = rounded(zero) if zero and gamma == 0 else False
    r = rounded
    if form == "product":
        return ("pow", r(alpha), r(beta), r(gamma), norm, act, None if clip is None else r(clip), zero)
    return ("sum", r(alpha), r(beta), r(gamma), norm, act, None if clip is None else r(clip))
