"""Search spaces: configs, the searcher contract (Optuna, unit-box vectors), named points that
reproduce the named methods mask for mask, and canonical keys (equal keys => identical masks),
on a tiny Llama with real calibration statistics."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import optuna
import pytest
import torch
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from automl_prune.allocation import weighted_mean
from automl_prune.calibration.stats import LinearStats
from automl_prune.errors import UserError
from automl_prune.metrics.kernel import default_group, score
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
from automl_prune.pruning.layer import metric_mask, prune_weight
from automl_prune.pruning.masks import nm_mask, unstructured_mask
from automl_prune.pruning.methods import METHODS, plan_for_method
from automl_prune.pruning.plan import PruningPlan
from search_spaces import (
    check_params,
    from_vector,
    make_space,
    metric_form,
    metric_key,
    suggest,
    to_vector,
    vector_bounds,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

BLOCKS = 4
METRICS = ["bawa", "optishear", "generic"]
ALLOCATIONS = ["uniform", "owl", "alpha", {"name": "offsets", "n_blocks": BLOCKS}, "depth"]
PATTERNS = ["unstructured", "sparsity", "nm"]




@pytest.fixture(scope="module")
def prune(calibrated):
    """plan -> {layer: pruned weight} on the calibrated tiny model (memoised by the plan's YAML)."""
    model, stats, _ = calibrated
    blocks = decoder_blocks(model)
    memo: dict[str, dict] = {}

    def run(plan: PruningPlan) -> dict[str, torch.Tensor]:
        key = json.dumps(plan.to_dict(), sort_keys=True)
        if key not in memo:
            memo[key] = {
                f"{i}.{name}": prune_weight(lin.weight, stats[i].get(name), plan, plan.sparsity_for(i, name, len(blocks)))[0]
                for i, block in enumerate(blocks) for name, lin in prunable_linears(block).items()
            }
        return memo[key]

    return run


def same_masks(a: dict, b: dict) -> bool:
    # no weight of the random model is exactly zero, so equal pruned weights <=> equal masks
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def near_tie_equal(sa: torch.Tensor, sb: torch.Tensor, ma: torch.Tensor, mb: torch.Tensor, ranking: str,
                   m: int = 4, rtol: float = 1e-5) -> bool:
    """Masks ``ma``/``mb`` of scores ``sa``/``sb`` are equal up to float rounding of near-ties (the
    contract's caveat): inside each comparison group (a row, the matrix, or an N:M group of ``m``)
    the entries on which they disagree have near-equal scores, under both scorings."""
    diff = ma != mb
    if not bool(diff.any()):
        return True
    rows, cols = torch.meshgrid(torch.arange(ma.shape[0]), torch.arange(ma.shape[1]), indexing="ij")
    gid = {"row": rows, "matrix": torch.zeros_like(rows), "nm": rows * ma.shape[1] + cols // m}[ranking]
    for g in gid[diff].unique():
        sel = diff & (gid == g)
        for s in (sa, sb):
            v = s[sel].double()
            if float(v.max() - v.min()) > rtol * float(v.abs().max()):
                return False
    return True


@pytest.fixture(scope="module")
def plan_scores(calibrated):
    """plan -> [(scores, mask, ranking) per layer] of the first and last blocks of the calibrated
    tiny model (memoised)."""
    model, stats, _ = calibrated
    blocks = decoder_blocks(model)
    memo: dict[str, list] = {}

    def run(plan: PruningPlan) -> list:
        key = json.dumps(plan.to_dict(), sort_keys=True)
        if key not in memo:
            ranking = "nm" if plan.nm else (plan.group or default_group(plan.metric))
            memo[key] = [
                (score(plan.metric, lin.weight, stats[i].get(name)),
                 metric_mask(lin.weight, stats[i].get(name), plan, plan.sparsity_for(i, name, len(blocks))), ranking)
                for i, block in enumerate(blocks) if i in (0, BLOCKS - 1) for name, lin in prunable_linears(block).items()
            ]
        return memo[key]

    return run


def plans_equal(a: list, b: list) -> tuple[bool, bool]:
    """(exactly equal masks, equal up to near-ties) of two ``plan_scores`` results."""
    exact = all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    return exact, exact or all(x[2] == y[2] and near_tie_equal(x[0], y[0], x[1], y[1], x[2]) for x, y in zip(a, b))


def _label(x) -> str:
    return x if isinstance(x, str) else x["name"]


def _study(seed: int = 0, sampler: str = "random") -> optuna.Study:
    if sampler == "random":
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))


# ----- make_space: configs ------------------------------------------------------------------------------
COMBOS = list(itertools.product(METRICS, ALLOCATIONS, PATTERNS))


@pytest.mark.parametrize("metric, allocation, pattern", COMBOS, ids=["-".join(_label(x) for x in c) for c in COMBOS])
def test_make_space_for_every_config(metric, allocation, pattern):
    config = {"metric": metric, "allocation": allocation, "pattern": pattern}
    as_dicts = {k: ({"name": v} if isinstance(v, str) else v) for k, v in config.items()}
    if pattern == "nm" and _label(allocation) != "uniform":
        for cfg in (config, as_dicts):
            with pytest.raises(UserError, match=r"'space\.allocation'.*uniform"):
                make_space(cfg)
        return
    space = make_space(config)
    assert space.name == f"{metric}+{_label(allocation)}+{pattern}"
    assert make_space(as_dicts).distributions() == space.distributions()  # bare names = {name: ...}
    assert make_space(space) is space
    dists = space.distributions()
    prefixes = {"metric", "alloc", "pattern"}
    assert dists and all(n.split(".")[0] in prefixes for n in dists)
    assert ("pattern.sparsity" in dists) == (pattern == "sparsity")
    if _label(allocation) == "offsets":
        assert [n for n in dists if n.startswith("alloc.")] == [f"alloc.offset.{b}" for b in range(BLOCKS)]
    points = space.named_points()
    assert points, "every space has named points"
    for label, point in points.items():
        check_params(space, point)
        assert space.canonical_key(point) == space.canonical_key(dict(point))


def test_default_space():
    space = make_space(None)
    assert space.name == "bawa+uniform+unstructured"
    assert make_space({}).distributions() == space.distributions()
    assert list(space.named_points()) == ["wanda", "ria", "stade", "magnitude", "bawa"]


BAD_CONFIGS = [
    ({"metrics": "bawa"}, "space.metrics"),
    ({"metric": "nope"}, "space.metric.name"),
    ({"metric": {"alpha": [0, 1]}}, "space.metric.name"),
    ({"allocation": "owls"}, "space.allocation.name"),
    ({"pattern": "2:4"}, "space.pattern.name"),
    ({"metric": 3}, "space.metric"),
    ([("metric", "bawa")], "space"),
    ({"metric": {"name": "bawa", "alhpa": [0, 1]}}, "space.metric.alhpa"),
    ({"metric": {"name": "bawa", "alpha": "wide"}}, "space.metric.alpha"),
    ({"metric": {"name": "bawa", "alpha": [0, 1, 2]}}, "space.metric.alpha"),
    ({"metric": {"name": "bawa", "alpha": [2, 1]}}, "space.metric.alpha"),
    ({"metric": {"name": "bawa", "alpha": [float("-inf"), 1]}}, "space.metric.alpha"),
    ({"metric": {"name": "bawa", "beta": [float("nan"), 1]}}, "space.metric.beta"),
    ({"metric": {"name": "bawa", "gamma": [-0.5, 1]}}, "space.metric.gamma"),
    ({"metric": {"name": "bawa", "clip_quantile": [0.9, 1.2]}}, "space.metric.clip_quantile"),
    ({"metric": {"name": "bawa", "forms": ["sum", "power"]}}, "space.metric.forms"),
    ({"metric": {"name": "bawa", "norms": []}}, "space.metric.norms"),
    ({"metric": {"name": "bawa", "group": "column"}}, "space.metric.group"),
    ({"metric": {"name": "optishear", "f_w": ["identity", "cube"]}}, "space.metric.f_w"),
    ({"metric": {"name": "optishear", "c_x": "none"}}, "space.metric.c_x"),
    ({"metric": {"name": "generic", "families": ["bawa", "ria"]}}, "space.metric.families"),
    ({"metric": {"name": "generic", "bawa": {"gamma": [-1, 1]}}}, "space.metric.bawa.gamma"),
    ({"metric": {"name": "generic", "optishear": {"f_x": ["nope"]}}}, "space.metric.optishear.f_x"),
    ({"allocation": {"name": "owl", "M": [5, 3]}}, "space.allocation.M"),
    ({"allocation": {"name": "owl", "M": [0, 3]}}, "space.allocation.M"),
    ({"allocation": {"name": "owl", "lambda": [-0.1, 0.1]}}, "space.allocation.lambda"),
    ({"allocation": {"name": "owl", "bounds": [0.2, 1.0]}}, "space.allocation.bounds"),
    ({"allocation": {"name": "alpha", "eps": [0.1, 1.5]}}, "space.allocation.eps"),
    ({"allocation": {"name": "offsets", "delta": 0.05, "step": 0.03}}, "space.allocation.step"),
    ({"allocation": {"name": "offsets", "n_blocks": 0}}, "space.allocation.n_blocks"),
    ({"allocation": {"name": "depth", "span": 3}}, "space.allocation.span"),
    ({"allocation": {"name": "uniform", "lambda": [0, 1]}}, "space.allocation.lambda"),
    ({"pattern": {"name": "unstructured", "sparsity": 1.0}}, "space.pattern.sparsity"),
    ({"pattern": {"name": "sparsity", "low": 0.8, "high": 0.3}}, "space.pattern.high"),
    ({"pattern": {"name": "sparsity", "points": [0.5, 1.5]}}, "space.pattern.points"),
    ({"pattern": {"name": "nm", "pattern": "4:2"}}, "space.pattern.pattern"),
    ({"pattern": "nm", "allocation": "owl"}, "space.allocation"),
    ({"pattern": "nm", "allocation": {"name": "offsets", "n_blocks": 4}}, "space.allocation"),
    ({"pattern": {"name": "unstructured", "sparsity": 0.5}, "allocation": {"name": "owl", "bounds": [0.6, 0.9]}},
     "space.pattern"),
    ({"pattern": {"name": "sparsity", "low": 0.3, "high": 0.95}, "allocation": {"name": "depth", "bounds": [0.1, 0.9]}},
     "space.pattern"),
]


@pytest.mark.parametrize("config, field", BAD_CONFIGS, ids=[f for _, f in BAD_CONFIGS])
def test_bad_configs_name_the_field(config, field):
    with pytest.raises(UserError) as info:
        make_space(config)
    message = str(info.value)
    assert f"'{field}" in message, message
    assert message.startswith("invalid space config")


def test_target_outside_bounds_is_fine_for_the_uniform_allocation():
    # the uniform allocation never clips, so its bounds do not restrict the target
    make_space({"pattern": {"name": "sparsity", "low": 0.3, "high": 0.95}})


# ----- the searcher contract ---------------------------------------------------------------------------
SEARCH_CONFIGS = [
    {"metric": "generic"},
    {"metric": "bawa", "allocation": "owl", "pattern": "sparsity"},
    {"metric": "optishear", "allocation": "alpha"},
    {"metric": {"name": "bawa", "group": "matrix"}, "allocation": {"name": "offsets", "step": 0.05}},
    {"metric": "generic", "allocation": {"name": "depth", "bounds": [0.1, 0.9]},
     "pattern": {"name": "sparsity", "low": 0.4, "high": 0.7, "step": 0.05}},
    {"metric": "bawa", "pattern": {"name": "nm", "pattern": "4:8"}},
]


@pytest.mark.parametrize("config", SEARCH_CONFIGS, ids=lambda c: make_space(c).name)
def test_optuna_trials_decode_to_valid_plans(config, calibrated, profile, prune):
    model, _, _ = calibrated
    space = make_space(config).bind(profile)
    dists = space.distributions()
    study = _study(seed=len(dists), sampler="tpe")
    blocks = decoder_blocks(model)
    for _ in range(10):
        trial = study.ask()
        params = suggest(space, trial)
        assert params == trial.params
        check_params(space, params)
        plan = space.decode(params, profile)
        assert isinstance(plan, PruningPlan)
        assert PruningPlan.from_dict(yaml.safe_load(plan.to_yaml())) == plan  # plain data
        target = space.pattern.target(params)
        if plan.nm is not None:
            assert plan.sparsity == pytest.approx(target)
        elif isinstance(plan.sparsity, list):
            assert len(plan.sparsity) == BLOCKS
            assert weighted_mean(plan.sparsity, profile.block_params) == pytest.approx(target, abs=1e-9)
            lo, hi = space.allocation.bounds
            assert all(lo <= s <= hi for s in plan.sparsity)
        else:
            assert plan.sparsity == target
        pruned = prune(plan)
        zeros = sum(int((w == 0).sum()) for w in pruned.values())
        total = sum(w.numel() for w in pruned.values())
        # per row / per matrix counts are floors of n * s: at most one weight per row below the target
        assert target - 1 / 64 - 1e-9 <= zeros / total <= target + 1e-9
        for i, block in enumerate(blocks):
            for name in prunable_linears(block):
                s = plan.sparsity_for(i, name, BLOCKS)
                assert (pruned[f"{i}.{name}"] == 0).float().mean().item() == pytest.approx(s, abs=1 / 64 + 1e-6)
        study.tell(trial, float(zeros) / total + random.Random(trial.number).random())


@pytest.mark.parametrize("config", SEARCH_CONFIGS, ids=lambda c: make_space(c).name)
def test_unit_box_round_trip(config, profile):
    space = make_space(config).bind(profile)
    dists = space.distributions()
    xl, xu = vector_bounds(space)
    assert xl.tolist() == [0.0] * len(dists) and xu.tolist() == [1.0] * len(dists)
    study = _study(seed=1)
    rng = np.random.default_rng(0)
    points = [suggest(space, study.ask()) for _ in range(20)] + list(space.named_points().values())
    for params in points:
        x = to_vector(space, params)
        assert x.shape == (len(dists),) and np.all((x >= 0) & (x <= 1))
        back = from_vector(space, x)
        assert list(back) == list(dists)
        for name, d in dists.items():
            if isinstance(d, FloatDistribution):
                assert back[name] == pytest.approx(params[name], rel=1e-12, abs=1e-12)
            else:
                assert back[name] == params[name] and type(back[name]) is type(params[name])
        assert space.canonical_key(back) == space.canonical_key(params)
    for _ in range(50):  # any point of the box (and beyond: clipped) decodes
        x = rng.uniform(-0.2, 1.2, len(dists))
        params = from_vector(space, x)
        check_params(space, params)
        assert from_vector(space, to_vector(space, params)) == pytest.approx(params)
        space.decode(params, profile)
    with pytest.raises(ValueError, match="entries"):
        from_vector(space, np.zeros(len(dists) + 1))


def test_categorical_vector_cells():
    space = make_space({"metric": "optishear"})
    d = space.distributions()["metric.f_w"]
    n = len(d.choices)
    for i, choice in enumerate(d.choices):
        for u in (i / n + 1e-9, (i + 0.5) / n, (i + 1) / n - 1e-9):
            x = to_vector(space, space.named_points()["wanda"])
            x[list(space.distributions()).index("metric.f_w")] = u
            assert from_vector(space, x)["metric.f_w"] == choice


def test_check_params_rejects_bad_values():
    space = make_space({"metric": "bawa", "allocation": "owl", "pattern": "sparsity"})
    good = space.named_points()["wanda+owl@s=0.55"]
    check_params(space, good)
    bad = [
        {"metric.alpha": 2.5},
        {"metric.gamma": -0.1},
        {"metric.clip_q": 0.5},
        {"alloc.M": 11.0},
        {"alloc.lambda": 0.0},
        {"pattern.sparsity": 0.85},
        {"metric.form": "power"},
        {"metric.group": "column_block"},
        {"metric.clip": 1},  # not the bool True
        {"metric.clip": "False"},
        {"metric.alpha": float("nan")},
    ]
    for change in bad:
        with pytest.raises(ValueError, match="outside its distribution"):
            check_params(space, {**good, **change})
        with pytest.raises(ValueError):
            space.decode({**good, **change})
    with pytest.raises(ValueError, match="missing"):
        check_params(space, {k: v for k, v in good.items() if k != "metric.beta"})
    with pytest.raises(ValueError, match="unknown"):
        check_params(space, {**good, "metric.delta": 1.0})


def test_offsets_space_needs_binding(profile):
    space = make_space({"allocation": "offsets"})
    with pytest.raises(UserError, match="n_blocks"):
        space.distributions()
    bound = space.bind(profile)
    assert [n for n in bound.distributions() if n.startswith("alloc.")] == [f"alloc.offset.{b}" for b in range(BLOCKS)]
    with pytest.raises(UserError, match="blocks"):
        make_space({"allocation": {"name": "offsets", "n_blocks": 3}}).bind(profile)
    grid = make_space({"allocation": {"name": "offsets", "step": 0.05}}).bind(profile).distributions()["alloc.offset.0"]
    assert (grid.low, grid.high, grid.step) == (-0.05, 0.05, 0.05)  # OptiShear's {-0.05, 0, 0.05}


def test_sparsity_points_lie_on_the_step_grid():
    with pytest.warns(UserWarning, match="divisible"):  # Optuna lowers high to the grid
        space = make_space({"pattern": {"name": "sparsity", "low": 0.3, "high": 0.8, "step": 0.2}})
    d = space.distributions()["pattern.sparsity"]
    points = space.named_points()
    assert {p["pattern.sparsity"] for p in points.values()} == {0.3, 0.5, 0.7}  # Optuna's grid: 0.3, 0.5, 0.7
    for point in points.values():
        check_params(space, point)
    custom = make_space({"pattern": {"name": "sparsity", "low": 0.3, "high": 0.8, "step": 0.1, "points": [0.4, 0.45]}})
    assert [p["pattern.sparsity"] for p in custom.named_points().values()] == [0.4] * 5  # off-grid 0.45 is dropped
    assert d.high == 0.7


# ----- named points = the named methods -------------------------------------------------------------------
NAMED_CONFIGS = [
    {"metric": "bawa"},
    {"metric": "optishear"},
    {"metric": "generic"},
    {"metric": "bawa", "allocation": "owl"},
    {"metric": "generic", "allocation": "alpha"},
    {"metric": "bawa", "allocation": {"name": "offsets", "step": 0.05}},
    {"metric": "generic", "allocation": "depth"},
    {"metric": "bawa", "pattern": "nm"},
    {"metric": "generic", "pattern": {"name": "nm", "pattern": "4:8"}},
    {"metric": "bawa", "pattern": {"name": "sparsity", "points": [0.3, 0.6]}},
    {"metric": {"name": "bawa", "group": "row"}},
]
EXPECTED_LABELS = {
    "bawa": ["wanda", "ria", "stade", "magnitude", "bawa"],
    "optishear": ["wanda"],
    "generic": ["wanda", "ria", "stade", "magnitude", "bawa"],
}


@pytest.mark.parametrize("config", NAMED_CONFIGS, ids=lambda c: make_space(c).name + ("-row" if "group" in str(c) else ""))
def test_named_points_reproduce_the_named_methods(config, profile, prune):
    space = make_space(config).bind(profile)
    points = space.named_points()
    methods = [label.split("@")[0].split("+")[0] for label in points]
    metric = _label(config["metric"])
    if "group" in str(config):  # a row-only space cannot hold the per-matrix methods: they are left out
        assert sorted(set(methods)) == ["bawa", "stade", "wanda"]
    else:
        assert sorted(set(methods)) == sorted(EXPECTED_LABELS[metric])
    study = _study()
    for label, point in points.items():
        method = label.split("@")[0].split("+")[0]
        study.enqueue_trial(point)
        trial = study.ask()
        got = suggest(space, trial)
        assert got == point and all(type(got[k]) is type(point[k]) for k in point), label
        plan = space.decode(got, profile)
        ref = plan_for_method(method, sparsity=None if plan.nm else plan.sparsity, pattern=plan.pattern)
        assert plan.metric == ref.metric, label  # decoded to the named spec itself, not an equivalent
        if plan.nm is None:
            assert (plan.group or default_group(plan.metric)) == (ref.group or default_group(ref.metric)), label
        assert same_masks(prune(plan), prune(ref)), label
        if "+" in label:  # an allocation's named point: the paper's allocation with the Wanda metric
            assert isinstance(plan.sparsity, list)
            assert weighted_mean(plan.sparsity, profile.block_params) == pytest.approx(0.5, abs=1e-12)
        study.tell(trial, 0.0)


def test_reference_groups_of_the_named_methods():
    """The comparison group of each method in its reference code (design notes 3) is what both the
    method plans and the named points use."""
    expected = {"wanda": "row", "stade": "row", "bawa": "row", "magnitude": "matrix", "ria": "matrix"}
    space = make_space({"metric": "bawa"})
    for method, group in expected.items():
        plan = plan_for_method(method, sparsity=0.5)
        assert (plan.group or default_group(plan.metric)) == group
        assert space.named_points()[method]["metric.group"] == group
    assert set(METHODS) == set(expected) | {"sparsegpt", "admm", "dsnot"}


def test_undecoded_equivalents_give_the_named_masks(prune):
    """The named-spec shortcut in decode is only a shortcut: the raw BaWA / OptiShear specs give
    the same masks (canonical.py R8, R13)."""
    pairs = [
        ("wanda", BaWAMetric(form="product", alpha=0, beta=0, gamma=1), "row"),
        ("stade", BaWAMetric(form="product", alpha=0, beta=0, gamma=1, activation="std"), "row"),
        ("magnitude", BaWAMetric(form="product", alpha=0, beta=0, gamma=0), "matrix"),
        ("ria", BaWAMetric(form="sum", alpha=1, beta=1, gamma=0.5, norm="l1"), "matrix"),
        ("wanda", OptiShearMetric(), "row"),
    ]
    for method, spec, group in pairs:
        for sparsity in (0.5, 0.7):
            raw = PruningPlan(metric=spec, sparsity=sparsity, group=group)
            assert same_masks(prune(raw), prune(plan_for_method(method, sparsity=sparsity))), (method, spec)


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
