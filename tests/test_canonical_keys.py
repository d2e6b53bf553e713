"""Canonical keys (search_spaces/canonical.py): parameter sets with equal keys give identical masks,
irreducible pairs keep different keys, allocation and pattern keys."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution

from automl_prune.calibration.stats import LinearStats
from automl_prune.metrics.kernel import score
from automl_prune.metrics.spec import (
    COEFFICIENTS,
    TRANSFORMS,
    BaWAMetric,
    MagnitudeMetric,
    OptiShearMetric,
    RIAMetric,
    StadeMetric,
    WandaMetric,
)
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.pruning.masks import nm_mask, unstructured_mask
from search_spaces import check_params, make_space, metric_form, metric_key
from space_helpers import BLOCKS, plans_equal

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ----- canonical keys: equal keys => identical masks ---------------------------------------------------------
@pytest.fixture(scope="module")
def unit_layers(calibrated):
    """A few real layers (weight, statistics) of the calibrated model, plus a synthetic layer whose
    statistics have exactly-zero and near-zero channels and whose weight has a zero row and column."""
    model, stats, _ = calibrated
    blocks = decoder_blocks(model)
    real = [(prunable_linears(blocks[b])[n].weight.detach(), stats[b][n])
            for b, n in [(0, "self_attn.q_proj"), (1, "self_attn.k_proj"), (2, "mlp.up_proj"), (3, "mlp.down_proj")]]
    g = torch.Generator().manual_seed(1)
    w = torch.randn(24, 32, generator=g) * 0.05
    w[5] = 0.0
    w[:, 11] = 0.0
    sumsq = torch.rand(32, generator=g, dtype=torch.float64) * 20 + 0.5
    sumsq[[3, 17]] = 0.0  # dead channels
    sumsq[[8, 25]] = torch.tensor([3e-14, 7e-13], dtype=torch.float64)  # below OptiShear's 1e-12 clamp
    s = torch.rand(32, generator=g, dtype=torch.float64) * 4 - 2
    s[[3, 17]] = 0.0
    synthetic = LinearStats(n_tokens=256, n_seqs=4, sum=s, sumsq=sumsq * 64, abs_sum=sumsq.sqrt() * 30,
                            absmax=(sumsq.sqrt() * 8).float())
    synthetic.sumsq[[8, 25]] = torch.tensor([3e-14, 7e-13], dtype=torch.float64) * 4
    return real + [(w, synthetic)]


def unit_masks(spec, ranking: str, layers, sparsities=(0.3, 0.6)) -> list[tuple]:
    """[(scores, mask, ranking)] for each layer (and each sparsity unless N:M 2:4)."""
    out = []
    for w, st in layers:
        sc = score(spec, w, st)
        assert torch.isfinite(sc).all(), spec
        if ranking == "nm":
            out.append((sc, nm_mask(sc, 2, 4), ranking))
        else:
            out.extend((sc, unstructured_mask(sc, s, ranking), ranking) for s in sparsities)
    return out


def masks_equal(a: list, b: list) -> bool:
    """Identical masks up to float rounding of near-ties (see near_tie_equal)."""
    return plans_equal(a, b)[1]


B = BaWAMetric
O = OptiShearMetric
REDUCTION_PAIRS = [  # (reduction, spec a, spec b, rankings where a and b must share the key)
    ("R1", B(form="sum", alpha=0.7, beta=1.2, gamma=0.8, activation="rms", clip_quantile=0.95),
     B(form="sum", alpha=0.7, beta=1.2, gamma=0.8, activation="l2", clip_quantile=0.95), "row matrix nm"),
    ("R1", B(form="product", alpha=0.5, beta=-0.5, gamma=1.7, activation="rms"),
     B(form="product", alpha=0.5, beta=-0.5, gamma=1.7), "row matrix nm"),
    ("R2", B(form="sum", alpha=0.3, beta=0.6, gamma=1.1, clip_quantile=1.0), B(form="sum", alpha=0.3, beta=0.6, gamma=1.1),
     "row matrix nm"),
    ("R3", B(form="sum", alpha=0.3, beta=0.6, gamma=0.0, activation="std", clip_quantile=0.9),
     B(form="sum", alpha=0.3, beta=0.6, gamma=0.0, activation="mean_abs"), "row matrix nm"),
    ("R4", B(form="sum", alpha=0.0, beta=0.0, gamma=0.9, norm="l1"), B(form="product", alpha=0, beta=0, gamma=0.9),
     "row matrix nm"),
    ("R5", B(form="sum", alpha=1.5, beta=0.0, gamma=0.9), B(form="product", alpha=0, beta=0, gamma=0.9, norm="l1"), "row nm"),
    ("R5", B(form="sum", alpha=-0.8, beta=0.0, gamma=0.4, activation="std", clip_quantile=0.93),
     B(form="product", alpha=1.1, beta=0, gamma=0.4, activation="std", clip_quantile=0.93), "row nm"),
    ("R6", B(form="product", alpha=1.9, beta=0.4, gamma=0.4), B(form="product", alpha=-1, beta=0.4, gamma=0.4), "row nm"),
    ("R7", B(form="product", alpha=0, beta=0, gamma=1.3, norm="l1"), B(form="product", alpha=0, beta=0, gamma=1.3),
     "row matrix nm"),
    ("R8", WandaMetric(), B(form="product", alpha=0, beta=0, gamma=1, clip_quantile=1.0), "row matrix nm"),
    ("R8", StadeMetric(), B(form="product", alpha=0, beta=0, gamma=1, activation="std"), "row matrix nm"),
    ("R8", MagnitudeMetric(), B(form="product", alpha=0.0, beta=0, gamma=0, activation="std", clip_quantile=0.9),
     "row matrix nm"),
    ("R8", MagnitudeMetric(), B(form="product", alpha=1.3, beta=0, gamma=0), "row nm"),
    ("R8", RIAMetric(a=0.5), B(form="sum", alpha=1, beta=1, gamma=0.5, norm="l1"), "row matrix nm"),
    ("R8", RIAMetric(a=1.3), B(form="sum", alpha=1, beta=1, gamma=1.3, norm="l1", activation="rms"), "row matrix nm"),
    ("R9", O(f_w="sigmoid", f_x="log", c_x="mean"), O(f_w="sigmoid", f_x="log", c_x="none"), "row matrix nm"),
    ("R9", O(f_w="exp", f_x="sigmoid", c_x="row_sum", c_w="row_column_sum"),
     O(f_w="exp", f_x="sigmoid", c_x="frobenius", c_w="row_column_sum"), "row matrix nm"),
    ("R10", O(f_w="log", f_x="sqrt", c_w="frobenius"), O(f_w="log", f_x="sqrt", c_w="total_sum"), "row matrix nm"),
    ("R10", O(f_w="log", f_x="exp", c_w="row_sum"), O(f_w="log", f_x="exp", c_w="mean"), "row nm"),
    ("R11", O(f_w="sqrt", f_x="softmax", c_x="column_sum"), O(f_w="sqrt", f_x="exp", c_x="column_sum"), "row matrix nm"),
    ("R12", O(f_w="softmax", f_x="log", c_w="column_sum"), O(f_w="exp", f_x="log", c_w="column_sum"), "row nm"),
    ("R13", O(f_w="sqrt"), B(form="product", alpha=0, beta=0, gamma=2, norm="l1"), "row matrix nm"),
    ("R13", O(f_w="square", f_x="square", c_w="row_sum", c_x="mean"), B(form="product", alpha=0.5, beta=0, gamma=1, norm="l1"),
     "row matrix nm"),
    ("R13", O(f_w="identity", f_x="sqrt", c_w="column_sum", c_x="total_sum"),
     B(form="product", alpha=0.0, beta=1.0, gamma=0.5, norm="l1"), "row matrix nm"),
    ("R13", O(f_w="sqrt", f_x="sqrt", c_w="column_sum"), B(form="product", alpha=0.7, beta=2.0, gamma=1.0, norm="l1"), "row nm"),
    ("R13", O(f_w="identity", f_x="identity", c_x="column_sum"), O(f_w="identity", f_x="identity", c_x="column_sum", c_w="mean"),
     "row matrix nm"),
    ("R13", O(f_w="square", f_x="square", c_x="column_sum", c_w="row_sum"), O(f_w="square", f_x="square", c_x="column_sum"),
     "row nm"),
]


@pytest.mark.parametrize("reduction, a, b, rankings", REDUCTION_PAIRS, ids=[p[0] for p in REDUCTION_PAIRS])
def test_each_reduction_gives_identical_masks(reduction, a, b, rankings, unit_layers):
    for ranking in ("row", "matrix", "nm"):
        if ranking in rankings.split():
            assert metric_key(a, ranking) == metric_key(b, ranking), (reduction, ranking)
            assert masks_equal(unit_masks(a, ranking, unit_layers), unit_masks(b, ranking, unit_layers)), (reduction, ranking)
        else:  # outside its ranking the reduction does not apply: the keys differ, and so do the masks
            assert metric_key(a, ranking) != metric_key(b, ranking), (reduction, ranking)
            assert not masks_equal(unit_masks(a, ranking, unit_layers), unit_masks(b, ranking, unit_layers)), (reduction, ranking)


NOT_REDUCED = [  # pairs that canonical.py says must keep different keys: the masks really differ
    # a common scaling of (beta, gamma)
    (B(form="product", alpha=0, beta=0.5, gamma=1.0), B(form="product", alpha=0, beta=1.0, gamma=2.0), "row"),
    (B(form="sum", alpha=0.5, beta=0.0, gamma=1.0), B(form="product", alpha=0, beta=0, gamma=1.0), "matrix"),
    (B(form="sum", alpha=0.0, beta=0.5, gamma=1.0), B(form="product", alpha=0, beta=0.5, gamma=1.0), "row"),
    (B(form="product", alpha=0, beta=0, gamma=1.0, clip_quantile=0.9), WandaMetric(), "row"),
    (B(form="product", alpha=0, beta=0, gamma=1.0, activation="mean_abs"), WandaMetric(), "row"),
    (O(f_w="sigmoid"), O(f_w="identity"), "row"),
    (O(f_w="softmax", f_x="log"), O(f_w="exp", f_x="log"), "matrix"),
    (O(f_x="square", c_x="column_sum"), MagnitudeMetric(), "row"),  # the zero flag: dead channels score 0
]


@pytest.mark.parametrize("a, b, ranking", NOT_REDUCED)
def test_irreducible_pairs_keep_different_keys(a, b, ranking, unit_layers):
    assert metric_key(a, ranking) != metric_key(b, ranking)
    assert not masks_equal(unit_masks(a, ranking, unit_layers), unit_masks(b, ranking, unit_layers))


def test_near_zero_channels_split_the_zero_flag_by_weight_power(unit_layers):
    """OptiShear's C_X column_sum clamps 1/x at 1e12: at gamma = 0 the weight power q then matters
    for channels with 0 < x < 1e-12 (the synthetic layer has two), so the keys must differ."""
    forms = [O(f_w=f, f_x="square", c_x="column_sum") for f in ("identity", "sqrt", "square")]
    synthetic = unit_layers[-1:]
    for ranking in ("row", "matrix"):
        keys = [metric_key(f, ranking) for f in forms]
        assert len(set(keys)) == 3
        masks = [unit_masks(f, ranking, synthetic) for f in forms]
        assert not masks_equal(masks[0], masks[2])
        # without near-zero channels they agree: the real layers
        real = [unit_masks(f, ranking, unit_layers[:-1]) for f in forms]
        assert masks_equal(real[0], real[1]) and masks_equal(real[0], real[2])


def test_optishear_keys_group_identical_masks(unit_layers):
    """All 2,401 OptiShear combinations, grouped by key per ranking: a sample of every group's
    members give their group's masks; distinct keys almost always give distinct masks."""
    rng = random.Random(0)
    specs = [O(f_w=a, f_x=b, c_w=c, c_x=d) for a in TRANSFORMS for b in TRANSFORMS for c in COEFFICIENTS for d in COEFFICIENTS]
    layers = [unit_layers[1], unit_layers[-1]]
    for ranking in ("row", "matrix", "nm"):
        groups: dict[str, list] = {}
        for spec in specs:
            groups.setdefault(metric_key(spec, ranking), []).append(spec)
        assert 200 < len(groups) < (600 if ranking == "matrix" else 400)  # far fewer than 2,401 (design notes 4)
        multi = [g for g in groups.values() if len(g) > 1]
        checked = 0
        for group in rng.sample(multi, 25):
            first = unit_masks(group[0], ranking, layers, sparsities=(0.5,))
            for other in rng.sample(group[1:], min(2, len(group) - 1)):
                assert masks_equal(first, unit_masks(other, ranking, layers, sparsities=(0.5,))), (ranking, group[0], other)
                checked += 1
        assert checked >= 40
        reps = [unit_masks(g[0], ranking, layers, sparsities=(0.5,)) for g in rng.sample(list(groups.values()), 40)]
        same = sum(masks_equal(x, y) for x, y in itertools.combinations(reps, 2))
        assert same <= 3, (ranking, same)


SPECIAL = {"metric.alpha": [0.0, 1.0, -1.0], "metric.beta": [0.0, 1.0], "metric.gamma": [0.0, 0.5, 1.0, 2.0],
           "metric.clip_q": [1.0, 0.95]}


def _random_value(name: str, d, rng: random.Random):
    """A random value of ``d``, floats mostly at the special values where the reductions apply."""
    if isinstance(d, CategoricalDistribution):
        return rng.choice(d.choices)
    if d.step is not None:
        return round(d.low + rng.randrange(round((d.high - d.low) / d.step) + 1) * d.step, 10)
    if name in SPECIAL and rng.random() < 0.7:
        return rng.choice([v for v in SPECIAL[name] if d.low <= v <= d.high])
    return rng.uniform(d.low, d.high)


@pytest.mark.parametrize("config, n_base, min_reduced", [
    ({"metric": {"name": "generic", "bawa": {"activations": ["l2", "rms", "std", "mean_abs"]}}}, 25, 10),
    ({"metric": "generic", "pattern": "nm"}, 10, 8),
    ({"metric": {"name": "bawa", "group": "matrix"}, "allocation": {"name": "offsets", "step": 0.025, "delta": 0.05}}, 20, 5),
], ids=["generic", "generic-nm", "bawa-offsets"])
def test_random_pairs_with_equal_keys_give_identical_masks(config, n_base, min_reduced, profile, plan_scores):
    """Twins of random candidates that differ in one or two parameters (or, for offsets, by a
    constant shift): whenever the keys agree, the masks agree (first and last blocks of the
    model); when the keys differ the masks usually differ too."""
    space = make_space(config).bind(profile)
    dists = space.distributions()
    rng = random.Random(7)
    names = list(dists)
    offsets = [n for n in names if n.startswith("alloc.offset")]
    equal_pairs = exact_pairs = reduced = differing = same_masks_differing_keys = 0
    for _ in range(n_base):
        base = {n: _random_value(n, d, rng) for n, d in dists.items()}
        key = space.canonical_key(base)
        twins = []
        for _ in range(12):
            changed = rng.sample(names, rng.choice([1, 2]))
            twins.append({**base, **{n: _random_value(n, dists[n], rng) for n in changed}})
        if offsets:
            k = rng.choice([-1, 1]) * 0.025
            if all(-0.05 - 1e-12 <= base[n] + k <= 0.05 + 1e-12 for n in offsets):
                twins.append({**base, **{n: round(base[n] + k, 10) for n in offsets}})
        for twin in twins:
            check_params(space, twin)
            same_key = space.canonical_key(twin) == key
            if not same_key and differing >= 30:
                continue
            plan_a, plan_b = space.decode(base, profile), space.decode(twin, profile)
            exact, same = plans_equal(plan_scores(plan_a), plan_scores(plan_b))
            if same_key:
                equal_pairs += 1
                exact_pairs += exact
                reduced += plan_a != plan_b  # different plans, one key: a reduction at work
                assert same, (base, twin, key)
            else:
                differing += 1
                same_masks_differing_keys += same
    assert equal_pairs >= 25 and reduced >= min_reduced, (equal_pairs, reduced)
    assert exact_pairs >= 0.8 * equal_pairs, (exact_pairs, equal_pairs)  # near-ties are the exception
    assert same_masks_differing_keys <= 0.1 * differing, (same_masks_differing_keys, differing)


def test_keys_of_allocations_and_patterns(profile):
    owl = make_space({"allocation": "owl", "pattern": "sparsity"})
    p = owl.named_points()["wanda+owl@s=0.55"]
    assert owl.canonical_key(p) != owl.canonical_key({**p, "alloc.M": 6.0})
    assert owl.canonical_key(p) != owl.canonical_key({**p, "pattern.sparsity": 0.6})
    assert owl.canonical_key(p) == owl.canonical_key({**p, "alloc.M": 5.0000000001})  # 6 significant digits
    depth = make_space({"allocation": "depth"})
    q = depth.named_points()["wanda"]
    assert json.loads(depth.canonical_key(q))["allocation"] == "uniform"
    assert depth.decode(q, None).sparsity == 0.5  # a = b = 0 needs no profile: the uniform allocation
    assert depth.canonical_key(q) != depth.canonical_key({**q, "alloc.a": 0.1})
    offsets = make_space({"allocation": {"name": "offsets", "n_blocks": BLOCKS}})
    r = offsets.named_points()["wanda"]
    flat = {**r, **{f"alloc.offset.{b}": 0.03 for b in range(BLOCKS)}}
    assert offsets.canonical_key(flat) == offsets.canonical_key(r)
    o = {**r, **{f"alloc.offset.{b}": v for b, v in enumerate([0.0, 0.02, -0.03, 0.05])}}
    shifted = {**o, **{k: v - 0.02 for k, v in o.items() if k.startswith("alloc.offset")}}
    assert offsets.canonical_key(shifted) == offsets.canonical_key(o) != offsets.canonical_key(r)
    assert np.allclose(offsets.decode(shifted, profile).sparsity, offsets.decode(o, profile).sparsity, rtol=0, atol=1e-12)
    assert offsets.decode(flat, profile).sparsity == 0.5
    # the N:M key ignores the comparison group (N:M ranks inside groups of M within a row)
    nm = make_space({"pattern": "nm"})
    wanda = nm.named_points()["wanda"]
    assert nm.canonical_key(wanda) == nm.canonical_key({**wanda, "metric.group": "matrix"})
    un = make_space({})
    w = un.named_points()["wanda"]
    assert un.canonical_key(w) != un.canonical_key({**w, "metric.group": "matrix"})


def test_metric_form_rejects_unknown_ranking():
    with pytest.raises(ValueError):
        metric_form(WandaMetric(), "column_block")


def test_owl_with_lambda_zero_in_range_encodes_uniform(profile):
    space = make_space({"metric": "bawa", "allocation": {"name": "owl", "lambda": [0.0, 0.3]},
                        "pattern": {"name": "sparsity", "low": 0.3, "high": 0.8, "points": [0.3, 0.6]}}).bind(profile)
    points = space.named_points()
    assert {"wanda@s=0.3", "wanda+owl@s=0.3", "wanda@s=0.6"} <= set(points)
    plan = space.decode(points["wanda@s=0.6"], profile)
    assert plan.sparsity == pytest.approx([0.6] * len(plan.sparsity))
    other_m = dict(points["wanda@s=0.6"], **{"alloc.M": 9.0})
    assert space.canonical_key(other_m) == space.canonical_key(points["wanda@s=0.6"])  # lambda 0: M is moot
    assert make_space({"metric": "bawa", "allocation": "owl"}).allocation.named_points().keys() == {"owl"}
