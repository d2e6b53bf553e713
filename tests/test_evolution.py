"""The level database and the evolution searcher (EvoPress): ladders keep the exact sparsity,
swapped layers equal pruned ones, the database refuses another key and resumes a build, the
evolution resumes at its generation, and its selected plan is compared held out."""

from __future__ import annotations

import json
import random

import optuna
from optuna.trial import TrialState
import pytest
import torch

from automl_prune.errors import UserError
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.database import LevelDatabase
from automl_prune.pruning.levels import default_step, exact_extras, ladder
from automl_prune.pruning.plan import PruningPlan
from automl_prune.search.study.config import load_config
from automl_prune.search.searchers.evolution import ATTR, level_switch
from automl_prune.search.run import run_search
from reference import pruned_at
from study_configs import tiny_study_config

WANDA = {"name": "bawa", "forms": ["product"], "alpha": [0, 0], "beta": [0, 0], "gamma": [1, 1], "norms": ["l2"],
         "activations": ["l2"], "clip": False}
LEVELS_SPACE = {"metric": WANDA, "allocation": {"name": "levels", "levels": 4, "base": "owl"},
                "pattern": {"name": "unstructured", "sparsity": 0.6}}


def test_ladder_steps_are_whole_rows_and_the_level_switch_keeps_the_exact_count():
    shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
    step = default_step(shapes, 0.7, 8, "row")
    assert step % 4608 == 0  # lcm of the row counts
    ladders = {f"l{i}": ladder(r, c, s, step, 8, "row") for i, ((r, c), s) in enumerate(zip(shapes, [0.7, 0.62, 0.75, 0.7]))}
    for lad in ladders.values():
        assert lad.low <= 0 <= lad.high and all(0 <= z < lad.group_size for z in lad.zeros)
        assert all(pruned_at(lad, lv + 1) - pruned_at(lad, lv) == step for lv in range(lad.low, lad.high))
    base = sum(pruned_at(lad, 0) for lad in ladders.values())
    rng = random.Random(0)
    levels = {k: 0 for k in ladders}
    bounds = {k: (v.low, v.high) for k, v in ladders.items()}
    for _ in range(200):
        levels = level_switch(levels, bounds, rng)
        assert all(bounds[k][0] <= v <= bounds[k][1] for k, v in levels.items())
        assert sum(pruned_at(ladders[k], v) for k, v in levels.items()) == base  # exact, not approximate
    assert any(levels.values())


@pytest.mark.parametrize("group", ["row", "matrix"])
def test_the_base_allocation_prunes_the_targets_total_although_rows_round_down(group):
    """60% of a 576-column row is 345.6 weights: rounding every row down (as Wanda does) realises
    59.91% over SmolLM2's layer shapes; the ladders' base must prune the target's total to less
    than one layer's rows, so that every plan the evolution compares prunes as many weights as the
    baseline it is compared with."""
    shapes = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)] * 30
    total = sum(r * c for r, c in shapes)
    step = default_step(shapes, 0.6, 5, group)
    plain = sum(pruned_at(ladder(r, c, 0.6, step, 5, group), 0) for r, c in shapes)
    extras = exact_extras([(r, c, 0.6) for r, c in shapes], group)
    exact = [ladder(r, c, 0.6, step, 5, group, e) for (r, c), e in zip(shapes, extras)]
    pruned = sum(pruned_at(lad, 0) for lad in exact)
    if group == "row":
        assert 0.6 * total - plain > 0.0008 * total  # the rounding this fixes
    assert 0 <= 0.6 * total - pruned < 192
    assert set(extras) <= {0, 1}
    assert all(pruned_at(lad, 1) - pruned_at(lad, 0) == step for lad in exact if lad.high >= 1)


def _database(calibrated, tmp_path, plan, levels=2):
    model, stats, info = calibrated
    from automl_prune.models.adapters import decoder_blocks, prunable_linears

    blocks = decoder_blocks(model)
    mods = {f"{i}.{n}": lin for i, b in enumerate(blocks) for n, lin in prunable_linears(b).items()}
    shapes = [tuple(m.weight.shape) for m in mods.values()]
    step = default_step(shapes, 0.6, levels, "row")
    ladders = {k: ladder(*m.weight.shape, 0.6, step, levels, "row") for k, m in mods.items()}
    key = {"test": 1, "plan": plan.to_dict()}
    return model, stats, mods, ladders, LevelDatabase(tmp_path / "db", key, ladders, plan)


@pytest.mark.parametrize("group", ["row", "matrix"])
def test_a_plans_written_sparsities_give_back_every_levels_exact_count(group):
    """A plan writes each layer's sparsity to 10 decimals; on SmolLM2's shapes (a whole 576 x 1536
    matrix is 884,736 weights) that rounding must still give back the level's exact count, or a
    candidate on the ladders would not be recognised as one (pruned again instead of swapped)."""
    from automl_prune.pruning.masks import group_count

    shapes = [(576, 576), (192, 576), (1536, 576), (576, 1536)]
    step = default_step(shapes, 0.7, 5, group)
    for rows, cols in shapes:
        lad = ladder(rows, cols, 0.7, step, 5, group)
        for level in range(lad.low, lad.high + 1):
            assert group_count(lad.group_size, lad.sparsity_at(level)) == lad.zeros_at(level), (rows, cols, level)


@pytest.mark.parametrize("update", ["none", "sparsegpt", "admm"])
def test_swapped_layers_equal_pruned_layers(calibrated, tmp_path, update):
    plan = PruningPlan(metric={"name": "wanda"}, sparsity=0.6, update=update)
    if update == "admm":  # as --method admm: Wanda's score over the whole matrix, gradual masks
        plan = plan.with_fields(group="matrix", admm={"gradual": True, "iterations": 4, "gradual_iterations": 3})
    model, stats, mods, ladders, db = _database(calibrated, tmp_path, plan)
    if update != "none":  # the update reads the Gram matrices
        from automl_prune.calibration.dense import dense_statistics
        from tiny_models import byte_windows

        stats = dense_statistics(model, byte_windows(8, 64)[0], with_gram=True, use_cache=False, progress=False).stats
    dense = {k: m.weight.detach().clone() for k, m in mods.items()}
    db.build(dense, lambda n: stats[int(n.split(".")[0])][n.split(".", 1)[1]], progress=False)
    assert not db.missing()
    rng = random.Random(1)
    levels = {k: rng.randint(v.low, v.high) for k, v in ladders.items()}
    layer_sparsity = {k: ladders[k].sparsity_at(lv) for k, lv in levels.items()}
    per_layer = plan.with_fields(layer_sparsity=layer_sparsity)
    assert db.levels_of(per_layer, 4) == levels
    db.swap_into(mods, dense, levels, None)
    swapped = {k: m.weight.detach().clone() for k, m in mods.items()}
    for k, m in mods.items():
        m.weight.data.copy_(dense[k])
    prune_model(model, per_layer, stats=stats, progress=False)
    for k, m in mods.items():
        assert torch.equal(m.weight, swapped[k]), k
        assert int((m.weight == 0).sum()) == pruned_at(ladders[k], levels[k])
    for k, m in mods.items():
        m.weight.data.copy_(dense[k])
    # another metric or a sparsity off the ladders is pruned, not swapped
    assert db.levels_of(per_layer.with_fields(metric={"name": "magnitude"}), 4) is None
    assert db.levels_of(plan.with_fields(sparsity=0.55), 4) is None


def test_database_refuses_another_key_and_resumes_a_build(calibrated, tmp_path):
    plan = PruningPlan(metric={"name": "wanda"}, sparsity=0.6)
    model, stats, mods, ladders, db = _database(calibrated, tmp_path, plan)
    dense = {k: m.weight.detach().clone() for k, m in mods.items()}
    db.build(dense, lambda n: stats[int(n.split(".")[0])][n.split(".", 1)[1]], progress=False)
    first = db.path(0).stat().st_mtime_ns
    db.path(1).unlink()
    assert db.missing() == [1]
    db.build(dense, lambda n: stats[int(n.split(".")[0])][n.split(".", 1)[1]], progress=False)
    assert not db.missing() and db.path(0).stat().st_mtime_ns == first  # only the missing level rebuilt
    with pytest.raises(UserError, match="built for another setting .*plan"):
        LevelDatabase(tmp_path / "db", {"test": 1, "plan": plan.with_fields(update="sparsegpt").to_dict()}, ladders,
                      plan.with_fields(update="sparsegpt"))
    with pytest.raises(UserError, match="one-shot"):
        LevelDatabase(tmp_path / "db2", {}, ladders, plan.with_fields(mode="sequential"))


def test_evolution_study_resumes_and_reports_the_selected_plan(tmp_path, tiny_llama_dir, data_dir):
    searcher = {"name": "evolution", "seed": 0, "offspring": 4, "survivors": 1, "stage_tokens": 128}
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, space=LEVELS_SPACE, searcher=searcher,
                             objectives=[{"name": "kl", "params": {"topk": 64}}], budget={"trials": 6},
                             final={"top": 1, "fidelity_sample": 0, "baselines": ["owl"]})
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False)
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    record = study.user_attrs[ATTR]
    assert len(record["parents"]) == 2  # the named point, then 4 + 1 children
    # level switches move whole steps of weights: every candidate prunes the same count
    assert len({round(t.user_attrs["realised_sparsity"], 9) for t in study.trials if t.state == TrialState.COMPLETE}) == 1
    final = json.loads((out / "final.json").read_text())
    assert final["selection"]["selected"] == record["parents"][-1]
    meta = json.loads((out / "meta.json").read_text())  # the database build is timed apart from the search budget
    assert 0 <= meta["database_seconds"] <= meta["search_seconds"]
    # resume with a larger budget: generations continue, nothing scored twice
    before = [(t.number, t.values) for t in study.trials]
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, space=LEVELS_SPACE, searcher=searcher,
                             objectives=[{"name": "kl", "params": {"topk": 64}}], budget={"trials": 10},
                             final={"top": 1, "fidelity_sample": 0, "baselines": ["owl"]})
    run_search(load_config(path), out, progress=False)
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    assert len(study.trials) == 10 and len(study.user_attrs[ATTR]["parents"]) == 3
    assert [(t.number, t.values) for t in study.trials[:len(before)]] == before  # kept, not scored again
    keys = [t.user_attrs["canonical_key"] for t in study.trials]
    assert len(set(keys)) == len(keys)  # duplicate children rejected
    report = (out / "report.md").read_text()
    assert "Evolution over 3 generations" in report


def test_evolution_over_updated_layers_starts_at_the_base_allocation(tmp_path, tiny_llama_dir, data_dir):
    """A space without a named point (Wanda's score over the whole matrix, with the ADMM update and
    its settings from the space) starts at the base allocation; children are swapped from a database
    of updated weights."""
    space = {"metric": {**WANDA, "group": "matrix"}, "allocation": {**LEVELS_SPACE["allocation"], "group": "matrix"},
             "pattern": LEVELS_SPACE["pattern"],
             "reconstruction": {"update": ["admm"], "admm": {"gradual": True, "iterations": 4, "gradual_iterations": 3}}}
    searcher = {"name": "evolution", "seed": 0, "offspring": 3, "survivors": 1, "stage_tokens": 128}
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, space=space, searcher=searcher,
                             objectives=[{"name": "kl", "params": {"topk": 64}}], budget={"trials": 4},
                             final={"top": 1, "fidelity_sample": 0, "baselines": ["admm"]})
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False)
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    first, *children = study.trials
    assert first.user_attrs["named_point"] == "owl" and all(v == 0 for v in first.params.values())
    plans = [PruningPlan.from_dict(t.user_attrs["plan"]) for t in study.trials]
    assert all(p.update == "admm" and p.admm.gradual and p.admm.iterations == 4 and p.group == "matrix" for p in plans)
    assert children and all(t.user_attrs.get("swapped") for t in children)


#: a joint plan on the tiny Llama: TPE on masks, ADMM on the selection's survivors, then the evolution
JOINT = dict(
    objectives=[{"name": "kl", "params": {"topk": 64}}], budget={"trials": 5},
    selection={"stages": [{"tokens": 128, "keep": 2}, {"tokens": 256, "keep": 1}], "candidates": 3, "seqlen": 64,
               "objective": {"name": "kl", "params": {"topk": 64}},
               "reconstruction": {"update": "admm", "admm": {"gradual": True, "iterations": 4, "gradual_iterations": 3}}},
    allocation_search={"allocation": {"name": "levels", "levels": 3, "base": "owl"},
                       "searcher": {"name": "evolution", "seed": 0, "offspring": 3, "survivors": 1, "stage_tokens": 128},
                       "budget": {"trials": 4}},
    final={"top": 1, "fidelity_sample": 0, "baselines": ["admm"]})


def test_joint_plan_metric_then_allocation_over_updated_layers_in_one_study(tmp_path, tiny_llama_dir, data_dir):
    """allocation_search: the first phase searches the metric on masks and updates its survivors
    (selection.reconstruction); its selected plan starts the evolution over a database of that plan's
    updated layers (its metric carried over unchanged), in <study>-allocation of the same storage;
    best.yaml is the evolution's choice, and a re-run resumes both phases without scoring again."""
    over = JOINT
    out = tmp_path / "run"
    run_search(load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **over)), out, progress=False)
    storage = f"sqlite:///{out / 'study.db'}"
    first = optuna.load_study(study_name="automl-prune", storage=storage)
    evo = optuna.load_study(study_name="automl-prune-allocation", storage=storage)
    chosen = first.trials[first.user_attrs["selected_trial"]]
    start, *children = evo.trials
    assert start.user_attrs["named_point"] == "selected" and start.user_attrs["start_trial"] == chosen.number
    metric_keys = [k for k in chosen.params if k.startswith("metric.")]
    assert metric_keys and all(t.params[k] == chosen.params[k] for t in evo.trials for k in metric_keys)
    plans = [PruningPlan.from_dict(t.user_attrs["plan"]) for t in evo.trials]
    assert all(p.update == "admm" and p.admm.iterations == 4 for p in plans)
    assert children and all(t.user_attrs.get("swapped") for t in children)
    best = PruningPlan.load(out / "best.yaml")
    selected = evo.trials[evo.user_attrs["selected_trial"]]
    assert best.layer_sparsity == PruningPlan.from_dict(selected.user_attrs["plan"]).layer_sparsity
    assert best.update == "admm" and best.metric == PruningPlan.from_dict(chosen.user_attrs["plan"]).metric
    final = json.loads((out / "final.json").read_text())
    by = {r.get("selected_by"): r for r in final["rows"]}
    assert by["first phase"]["trial"] == chosen.number and by["selection stages"]["trial"] == selected.number
    assert abs(by["selection stages"]["sparsity"] - by["first phase"]["sparsity"]) < 1e-3  # the same target, reallocated
    assert final["first_phase"]["selected"] == chosen.number
    report = (out / "report.md").read_text()
    assert "What the allocation phase bought" in report and "Evolution over" in report
    assert (out / "layerwise.png").exists()  # the per-layer sparsities of best.yaml
    # a re-run with the same budgets resumes: no trial added to either study
    run_search(load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **over)), out, progress=False)
    assert len(optuna.load_study(study_name="automl-prune-allocation", storage=storage).trials) == len(evo.trials)
    assert len(optuna.load_study(study_name="automl-prune", storage=storage).trials) == len(first.trials)


@pytest.mark.parametrize("over, message", [
    ({"space": {"metric": {"name": "bawa"}, "allocation": "uniform", "pattern": {"name": "nm", "pattern": "2:4"}}},
     "unstructured pattern"),
    ({"allocation_search": {"allocation": {"name": "owl"}}}, "searches per-layer levels"),
    ({"allocation_search": {"searcher": {"name": "tpe"}}}, "name: evolution"),
    ({"objectives": [{"name": "layer_recon"}, {"name": "sparsity"}]}, "one objective"),
    ({"allocation_search": {"searcher": {"name": "evolution", "stage_tokens": 100}}}, "multiple of 64"),
])
def test_bad_allocation_phases_are_refused_before_loading(tmp_path, tiny_llama_dir, data_dir, over, message):
    base = {"allocation_search": {}, "objectives": [{"name": "kl", "params": {"topk": 64}}]}
    with pytest.raises(UserError, match=message):
        load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **{**base, **over}))
