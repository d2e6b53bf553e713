"""Named points: the search spaces' points of the named methods reproduce their masks and comparison groups
(search_spaces <-> pruning.methods)."""

from __future__ import annotations

import optuna
import pytest

from automl_prune.allocation import weighted_mean
from automl_prune.metrics.kernel import default_group
from automl_prune.metrics.spec import BaWAMetric, OptiShearMetric
from automl_prune.pruning.methods import METHODS, plan_for_method
from automl_prune.pruning.plan import PruningPlan
from search_spaces import make_space, suggest
from space_helpers import _label, _study, same_masks

optuna.logging.set_verbosity(optuna.logging.WARNING)


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




@pytest.mark.parametrize("method, allocation, label", [("owl", "owl", "wanda+owl"),
                                                       ("alphapruning", "alpha", "wanda+alphapruning")])
def test_allocation_baselines_are_the_spaces_named_points(method, allocation, label, profile):
    """The final comparison's OWL / AlphaPruning baselines (computed from the profile, no space
    built) are the plans the allocation spaces' named points decode to."""
    from automl_prune.pruning.methods import allocation_baseline_plan

    space = make_space({"metric": {"name": "bawa"}, "allocation": {"name": allocation},
                        "pattern": {"name": "unstructured", "sparsity": 0.6}}).bind(profile)
    assert allocation_baseline_plan(method, 0.6, profile).to_dict() == space.decode(space.named_points()[label], profile).to_dict()
    alphas = profile.block_alphas() if allocation == "alpha" else None
    assert allocation_baseline_plan(method, 0.6, profile, alphas).to_dict() == allocation_baseline_plan(method, 0.6, profile).to_dict()
