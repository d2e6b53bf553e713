"""Metric specs (YAML round-trip, validation) and the scoring kernel against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pydantic
import pytest
import torch
import yaml

from automl_prune.calibration.stats import LinearStats
from automl_prune.metrics.kernel import default_group, requires_stats, score
from automl_prune.metrics.spec import (
    COEFFICIENTS,
    TRANSFORMS,
    BaWAMetric,
    MagnitudeMetric,
    OptiShearMetric,
    RIAMetric,
    StadeMetric,
    WandaMetric,
    metric_from_dict,
    to_dict,
)
from automl_prune.pruning.masks import unstructured_mask

# ----- a 2x3 example with hand-written statistics ---------------------------------------------------
# |W| = [[1, 2, 3], [4, 5, 6]]; row sums 6, 15; column sums 5, 7, 9.
W = torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]])
# 4 tokens from 2 sequences:
#   sumsq = [4, 9, 16]   -> l2 = [2, 3, 4], scaler_row = sumsq / 2 = [2, 4.5, 8], rms = [1, 1.5, 2]
#   sum = [0, 2, 4]      -> mean = [0, .5, 1], var = sumsq/4 - mean^2 = [1, 2, 3], std = [1, √2, √3]
#   abs_sum = [4, 6, 8]  -> mean_abs = [1, 1.5, 2]
STATS = LinearStats(
    n_tokens=4,
    n_seqs=2,
    sum=torch.tensor([0.0, 2.0, 4.0], dtype=torch.float64),
    sumsq=torch.tensor([4.0, 9.0, 16.0], dtype=torch.float64),
    abs_sum=torch.tensor([4.0, 6.0, 8.0], dtype=torch.float64),
    absmax=torch.tensor([2.0, 2.5, 3.0]),
)
X = [2.0, 4.5, 8.0]  # scaler_row
S2, S3 = math.sqrt(2), math.sqrt(3)


def check(metric, expected, stats=STATS):
    got = score(metric, W, stats)
    assert got.dtype == torch.float32 and got.shape == W.shape
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=1e-5, atol=1e-6)


def test_magnitude_needs_no_stats():
    check(MagnitudeMetric(), [[1, 2, 3], [4, 5, 6]], stats=None)


def test_wanda():
    check(WandaMetric(), [[2, 6, 12], [8, 15, 24]])


def test_stade():
    check(StadeMetric(), [[1, 2 * S2, 3 * S3], [4, 5 * S2, 6 * S3]])


def test_ria():
    act = [2**0.25, 4.5**0.25, 8**0.25]  # sqrt(scaler_row) ** 0.5
    rel = [[1 / 5 + 1 / 6, 2 / 7 + 2 / 6, 3 / 9 + 3 / 6], [4 / 5 + 4 / 15, 5 / 7 + 5 / 15, 6 / 9 + 6 / 15]]
    check(RIAMetric(), [[rel[i][j] * act[j] for j in range(3)] for i in range(2)])
    check(RIAMetric(a=0.0), rel)


def test_bawa_sum_l1():
    m = BaWAMetric(form="sum", alpha=1, beta=1, gamma=0.5, norm="l1", activation="l2")
    rel = [[1 / 6 + 1 / 5, 2 / 6 + 2 / 7, 3 / 6 + 3 / 9], [4 / 15 + 4 / 5, 5 / 15 + 5 / 7, 6 / 15 + 6 / 9]]
    check(m, [[rel[i][j] * [S2, S3, 2.0][j] for j in range(3)] for i in range(2)])


def test_bawa_product_l2_std():
    # r = ||W_i||_2 = [√14, √77]; k = ||W_:,j||_2 = [√17, √29, √45]; beta = 2 -> k^2 = [17, 29, 45]
    m = BaWAMetric(form="product", alpha=1, beta=2, gamma=1, norm="l2", activation="std")
    r = [math.sqrt(14), math.sqrt(77)]
    expected = [
        [1 / (r[0] * 17) * 1, 2 / (r[0] * 29) * S2, 3 / (r[0] * 45) * S3],
        [4 / (r[1] * 17) * 1, 5 / (r[1] * 29) * S2, 6 / (r[1] * 45) * S3],
    ]
    check(m, expected)


def test_bawa_activation_choices_and_clip():
    wanda_like = dict(form="product", alpha=0, beta=0, gamma=1)
    check(BaWAMetric(**wanda_like, activation="rms"), [[1, 3, 6], [4, 7.5, 12]])
    check(BaWAMetric(**wanda_like, activation="mean_abs"), [[1, 3, 6], [4, 7.5, 12]])
    # l2 = [2, 3, 4] clipped at its median 3 -> [2, 3, 3]
    check(BaWAMetric(**wanda_like, activation="l2", clip_quantile=0.5), [[2, 6, 9], [8, 15, 18]])


def test_optishear_identity_is_wanda_scaled():
    root_x = [S2, math.sqrt(4.5), math.sqrt(8)]  # sqrt(scaler_row) = ||X_j||_2 / sqrt(n_seqs)
    check(OptiShearMetric(), [[1 * root_x[0], 2 * root_x[1], 3 * root_x[2]], [4 * root_x[0], 5 * root_x[1], 6 * root_x[2]]])


def test_optishear_row_sum_square_column_sum_sqrt():
    # [|W|^2 / row sum] * [x^(1/4) / x]
    m = OptiShearMetric(f_w="square", c_w="row_sum", f_x="sqrt", c_x="column_sum")
    xs = [x**-0.75 for x in X]
    check(m, [[1 / 6 * xs[0], 4 / 6 * xs[1], 9 / 6 * xs[2]], [16 / 15 * xs[0], 25 / 15 * xs[1], 36 / 15 * xs[2]]])


def test_optishear_log_column_sum_exp_total_sum():
    # [log(|W|) / column sum] * [exp(sqrt x - max sqrt x) / sum x]
    m = OptiShearMetric(f_w="log", c_w="column_sum", f_x="exp", c_x="total_sum")
    sq = [math.sqrt(x) for x in X]
    ex = [math.exp(s - max(sq)) / 14.5 for s in sq]
    cs = [5, 7, 9]
    check(m, [[math.log(abs(float(W[i, j]))) / cs[j] * ex[j] for j in range(3)] for i in range(2)])


def test_optishear_softmax_row_column_sum_sigmoid_frobenius():
    # [softmax_row(|W|) / (row sum + column sum)] * [sigmoid(sqrt x) / ||x||_F]
    m = OptiShearMetric(f_w="softmax", c_w="row_column_sum", f_x="sigmoid", c_x="frobenius")
    A = [[1, 2, 3], [4, 5, 6]]
    rs, cs = [6, 15], [5, 7, 9]
    fro = math.sqrt(4 + 20.25 + 64)
    sig = [1 / (1 + math.exp(-math.sqrt(x))) / fro for x in X]
    expected = []
    for i in range(2):
        z = sum(math.exp(a) for a in A[i])
        expected.append([math.exp(A[i][j]) / z / (rs[i] + cs[j]) * sig[j] for j in range(3)])
    check(m, expected)


def test_optishear_mean_sqrt_row_column_softmax_and_more():
    # [sqrt|W| / mean|W|] * [softmax(sqrt x) / (sum x + x_j)]
    m = OptiShearMetric(f_w="sqrt", c_w="mean", f_x="softmax", c_x="row_column_sum")
    sq = [math.sqrt(x) for x in X]
    z = sum(math.exp(s) for s in sq)
    xf = [math.exp(sq[j]) / z / (14.5 + X[j]) for j in range(3)]
    A = [[1, 2, 3], [4, 5, 6]]
    check(m, [[math.sqrt(A[i][j]) / 3.5 * xf[j] for j in range(3)] for i in range(2)])
    # [sigmoid|W| / total] * [x / sum x]   (square of sqrt x is x; row_sum of the (1, in) row is the total)
    m = OptiShearMetric(f_w="sigmoid", c_w="total_sum", f_x="square", c_x="row_sum")
    check(m, [[1 / (1 + math.exp(-A[i][j])) / 21 * X[j] / 14.5 for j in range(3)] for i in range(2)])
    # [exp(|W| - 6) / ||W||_F] * [log(sqrt x) / mean x]
    m = OptiShearMetric(f_w="exp", c_w="frobenius", f_x="log", c_x="mean")
    xf = [math.log(math.sqrt(x)) / (14.5 / 3) for x in X]
    check(m, [[math.exp(A[i][j] - 6) / math.sqrt(91) * xf[j] for j in range(3)] for i in range(2)])


# ----- stats validation, groups ----------------------------------------------------------------------
@pytest.mark.parametrize("metric", [WandaMetric(), RIAMetric(), StadeMetric(), BaWAMetric(), OptiShearMetric()])
def test_metrics_need_matching_stats(metric):
    assert requires_stats(metric)
    with pytest.raises(ValueError, match="statistics"):
        score(metric, W, None)
    with pytest.raises(ValueError, match="input channels"):
        score(metric, W, LinearStats.empty(4))


def test_default_groups():
    assert default_group(MagnitudeMetric()) == "matrix"
    assert default_group(RIAMetric()) == "matrix"
    for m in (WandaMetric(), StadeMetric(), BaWAMetric(), OptiShearMetric()):
        assert default_group(m) == "row"
    assert not requires_stats(MagnitudeMetric())


# ----- special cases on realistic data ---------------------------------------------------------------
def _random_layer(out=24, inp=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    stats = LinearStats.empty(inp)
    x = torch.randn(4, 16, inp, generator=g) * torch.linspace(0.1, 5.0, inp) + torch.linspace(-1, 1, inp)
    stats.update(x, n_seqs=4)
    return w, stats


def test_wanda_is_bawa_product_000_1():
    w, stats = _random_layer()
    a = score(WandaMetric(), w, stats)
    b = score(BaWAMetric(form="product", alpha=0, beta=0, gamma=1), w, stats)
    torch.testing.assert_close(a, b)
    assert torch.equal(unstructured_mask(a, 0.5, "row"), unstructured_mask(b, 0.5, "row"))


def test_ria_is_bawa_sum_l1_up_to_constant():
    w, stats = _random_layer(seed=1)
    a = score(RIAMetric(), w, stats)
    b = score(BaWAMetric(form="sum", alpha=1, beta=1, gamma=0.5, norm="l1"), w, stats)
    ratio = a / b
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])), rtol=1e-5, atol=0)
    torch.testing.assert_close(float(ratio[0, 0]), stats.n_seqs**-0.25, rtol=1e-5, atol=0)  # (l2/sqrt(n))^.5 / l2^.5
    for group in ("row", "matrix"):
        assert torch.equal(unstructured_mask(a, 0.5, group), unstructured_mask(b, 0.5, group))


def test_zero_rows_and_columns_give_finite_scores():
    w, stats = _random_layer(seed=2)
    w[3] = 0
    w[:, 5] = 0
    specs = [
        RIAMetric(),
        BaWAMetric(),
        BaWAMetric(form="product", alpha=2, beta=-1, norm="l1"),
        BaWAMetric(clip_quantile=0.9, activation="std"),
    ]
    for spec in specs:
        s = score(spec, w, stats)
        assert torch.isfinite(s).all(), spec
        assert (s[3] == 0).all() and (s[:, 5] == 0).all()


# ----- OptiShear: all 2,401 operator combinations ----------------------------------------------------
def test_optishear_all_combinations_finite():
    assert len(TRANSFORMS) == 7 and len(COEFFICIENTS) == 7
    g = torch.Generator().manual_seed(0)
    w = torch.rand(6, 10, generator=g) * 2
    w[w < 0.4] = 0  # scattered zeros (log guard)
    w[2] = 0  # an all-zero row and column (coefficient guards)
    w[:, 7] = 0
    stats = LinearStats.empty(10)
    stats.update(torch.randn(3, 8, 10, generator=g) * torch.logspace(-2, 3, 10), n_seqs=3)
    stats.sumsq[4] = 0  # a dead input channel
    combos = list(itertools.product(TRANSFORMS, TRANSFORMS, COEFFICIENTS, COEFFICIENTS))
    assert len(combos) == 2401
    for f_w, f_x, c_w, c_x in combos:
        s = score(OptiShearMetric(f_w=f_w, f_x=f_x, c_w=c_w, c_x=c_x), w, stats)
        assert torch.isfinite(s).all(), (f_w, f_x, c_w, c_x)


def test_optishear_exp_shift_is_a_global_constant():
    w, stats = _random_layer(seed=3)
    s = score(OptiShearMetric(f_w="exp", f_x="exp"), w, stats)
    unshifted = w.abs().double().exp() * stats.scaler_row.sqrt().exp().reshape(1, -1)
    ratio = s.double() / unshifted
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0, 0])), rtol=1e-5, atol=0)


# ----- specs: YAML round-trip and validation ---------------------------------------------------------
ALL_SPECS = [
    MagnitudeMetric(),
    WandaMetric(),
    RIAMetric(),
    RIAMetric(a=1.25),
    StadeMetric(),
    BaWAMetric(),
    BaWAMetric(form="product", alpha=0.3, beta=-0.5, gamma=2.0, norm="l1", activation="mean_abs", clip_quantile=0.99),
    OptiShearMetric(),
    OptiShearMetric(f_w="log", f_x="softmax", c_w="row_column_sum", c_x="frobenius"),
]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_yaml_round_trip(spec):
    text = yaml.safe_dump(to_dict(spec))
    back = metric_from_dict(yaml.safe_load(text))
    assert back == spec and type(back) is type(spec)
    assert to_dict(spec)["name"] == spec.name
    assert metric_from_dict(spec) is spec
    hash(spec)  # frozen -> hashable


@pytest.mark.parametrize("name", ["magnitude", "wanda", "ria", "stade", "bawa", "optishear"])
def test_bare_name(name):
    assert metric_from_dict(name).name == name


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "wanda", "extra": 1},
        {"name": "sparsegpt"},
        "nope",
        {"a": 0.5},
        {"name": "ria", "a": float("nan")},
        {"name": "ria", "a": -1},
        {"name": "bawa", "form": "mean"},
        {"name": "bawa", "norm": "l3"},
        {"name": "bawa", "activation": "absmax"},
        {"name": "bawa", "gamma": -0.5},
        {"name": "bawa", "alpha": float("inf")},
        {"name": "bawa", "clip_quantile": 0.0},
        {"name": "bawa", "clip_quantile": 1.5},
        {"name": "optishear", "f_w": "tanh"},
        {"name": "optishear", "c_x": "max"},
    ],
)
def test_rejects_bad_specs(bad):
    with pytest.raises(ValueError):
        metric_from_dict(bad)


def test_specs_are_frozen():
    spec = BaWAMetric()
    with pytest.raises(pydantic.ValidationError):
        spec.alpha = 2.0  # type: ignore[misc]
