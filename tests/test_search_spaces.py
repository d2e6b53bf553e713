"""Search spaces: every metric x allocation x pattern builds, bad configs name the field, Optuna trials decode to
valid plans, the unit-box encoding round-trips (search_spaces: base, composite, parts, metrics, allocations,
patterns)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution

from automl_prune.allocation import weighted_mean
from automl_prune.errors import UserError
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.pruning.plan import PruningPlan
from search_spaces import check_params, from_vector, make_space, suggest, to_vector, vector_bounds
from space_helpers import ALLOCATIONS, BLOCKS, METRICS, PATTERNS, _label, _study

optuna.logging.set_verbosity(optuna.logging.WARNING)


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
    # the uniform allocation never clips, so its bounds do not restrict the target: a range reaching
    # past them builds (the same range with the depth allocation is refused, BAD_CONFIGS) and every
    # target decodes to itself, unclipped, inside or outside the bounds
    space = make_space({"allocation": {"name": "uniform", "bounds": [0.1, 0.9]},
                        "pattern": {"name": "sparsity", "low": 0.3, "high": 0.95}})
    dist = space.distributions()["pattern.sparsity"]
    assert (dist.low, dist.high) == (0.3, 0.95)
    point = space.named_points()["wanda@s=0.3"]
    for target in (0.3, 0.6, 0.9, 0.93, 0.95):
        plan = space.decode({**point, "pattern.sparsity": target})
        assert plan.sparsity == target and not plan.layer_sparsity, (target, plan.to_dict())


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


