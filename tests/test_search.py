"""Whole searches on a tiny Llama with real text: outputs, seeding with known methods, multi-objective
fronts (Optuna NSGA-III, pymoo NSGA-III), polishing, reports, config refusals. What every searcher
must do on every evaluator (seeded, resumable, a failed candidate fails its trial only) is
test_searcher_contract.py."""

from __future__ import annotations

import csv
import json

import optuna
import pytest
from optuna.trial import TrialState

from automl_prune.errors import UserError
from automl_prune.pruning.plan import PruningPlan
from automl_prune.search.study.config import load_config
from automl_prune.search.phases.polish import front_starts
from automl_prune.search.run import run_search
from study_configs import tiny_front_config, tiny_study_config


_config = tiny_study_config


def _study(out):
    return optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")


def test_tpe_search_outputs_and_known_methods_first(tmp_path, tiny_llama_dir, data_dir):
    config = load_config(_config(tmp_path, tiny_llama_dir, data_dir))
    out = tmp_path / "run"
    report = run_search(config, out, progress=False)
    for name in ("config.yaml", "study.db", "trials.csv", "best.yaml", "report.md", "final.json", "history.png"):
        assert (out / name).exists(), name
    study = _study(out)
    trials = study.get_trials()
    assert len(trials) == 10
    named = [t for t in trials if "named_point" in t.user_attrs]
    assert named and all(t.number < len(named) for t in named)  # evaluated first
    text = report.read_text()
    assert "Held-out comparison" in text and "wanda" in text and "Spearman" in text
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == 10
    # best.yaml is the plan of the lowest layer_recon value among the trials as trials.csv lists
    # them (found here, not asked of Optuna), and the values differ, so picking one is a choice
    done = [r for r in rows if r["state"] == "COMPLETE"]
    values = [float(r["value"]) for r in done]
    assert len(done) == 10 and len(set(values)) == len(values)
    lowest = int(min(done, key=lambda r: float(r["value"]))["number"])
    assert trials[lowest].value == min(values)
    origin = config.plan_origin(json.loads((out / "meta.json").read_text()))  # with the model record
    assert origin["model"]["blocks"] == 3
    assert PruningPlan.load(out / "best.yaml").to_dict() == \
        PruningPlan.from_dict({**trials[lowest].user_attrs["plan"], **origin}).to_dict()
    assert {t.user_attrs["named_point"] for t in named} >= {"wanda", "magnitude"}  # the baselines were searched from


@pytest.mark.parametrize("searcher", ["nsga3", "pymoo-nsga3"])
def test_sparsity_front_with_nsga3(tmp_path, tiny_llama_dir, data_dir, searcher):
    path = _config(tmp_path, tiny_llama_dir, data_dir,
                   space={"metric": {"name": "bawa"}, "allocation": {"name": "uniform"},
                          "pattern": {"name": "sparsity", "low": 0.3, "high": 0.8}},
                   objectives=[{"name": "layer_recon"}, {"name": "sparsity"}],
                   searcher={"name": searcher, "seed": 0, "population": 4},
                   final={"top": 2, "fidelity_sample": 0, "baselines": ["wanda"]})
    out = tmp_path / "run"
    run_search(load_config(path, {"budget.trials": 20}), out, progress=False)
    study = _study(out)
    trials = study.get_trials()
    assert len(study.directions) == 2 and len(trials) >= 20
    named = [t for t in trials if "named_point" in t.user_attrs]
    assert named and all(t.number < len(named) for t in named)  # the named points first, each as itself
    for t in named:
        plan = t.user_attrs["plan"]
        assert abs(plan["sparsity"] - t.params["pattern.sparsity"]) < 1e-9
    assert list((out / "pareto").glob("trial-*.yaml")) and (out / "pareto.png").exists()
    if searcher == "pymoo-nsga3":
        # every candidate pymoo proposed is a trial carrying its generation, index and point, and
        # the point decodes to the trial's own parameters (what a resume replays)
        from search_spaces import from_vector, make_space

        space = make_space(load_config(path).space)
        proposed = [t for t in trials if "named_point" not in t.user_attrs]
        assert proposed and all("pymoo" in t.user_attrs for t in proposed)
        for t in proposed:
            assert from_vector(space, t.user_attrs["pymoo"]["x"]) == t.params
        assert sorted((t.user_attrs["pymoo"]["generation"], t.user_attrs["pymoo"]["index"]) for t in proposed)[:4] == \
            [(0, 0), (0, 1), (0, 2), (0, 3)]
        assert not (out / "pymoo.pkl").exists()


@pytest.mark.parametrize("override, field", [
    ({"space": {"metric": {"name": "no-such-space"}}}, "metric"),
    ({"objectives": [{"name": "no-such-objective"}]}, "no-such-objective"),
    ({"searcher": {"name": "cmaes"}}, "searcher.name"),
    ({"searcher": {"name": "tpe", "population": 8}}, "'population' is a setting of nsga3, pymoo-nsga3, not of tpe"),
    ({"searcher": {"name": "evolution", "n_startup_trials": 4}}, "'n_startup_trials' is a setting of tpe"),
    ({"ray": {"storage_path": "/shared/ray"}}, "storage_path is no longer used"),
    ({"budget": {"trials": "many"}}, "budget.trials"),
    ({"space": {"metric": {"name": "bawa"}, "allocation": {"name": "uniform"}, "pattern": {"name": "unstructured", "sparsity": 1.4}}}, "sparsity"),
    ({"calibration": {"nsamples": -3}}, "calibration.nsamples"),
])
def test_bad_configs_fail_before_any_model_is_loaded(tmp_path, override, field):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"model": "no-such-model-anywhere", **override}))
    with pytest.raises(UserError) as err:
        load_config(path)
    assert field in str(err.value)


def test_allocation_search_compares_with_owl_and_plots_layerwise(tmp_path, tiny_llama_dir, data_dir):
    wanda = {"name": "bawa", "forms": ["product"], "alpha": [0, 0], "beta": [0, 0], "gamma": [1, 1], "norms": ["l2"],
             "activations": ["l2"], "clip": False, "group": "row"}
    path = _config(tmp_path, tiny_llama_dir, data_dir,
                   space={"metric": wanda, "allocation": {"name": "owl"}, "pattern": {"name": "unstructured", "sparsity": 0.6}},
                   searcher={"name": "tpe", "seed": 0, "n_startup_trials": 2},
                   final={"baselines": ["wanda", "owl"], "top": 1, "fidelity_sample": 0})
    out = tmp_path / "run"
    report = run_search(load_config(path, {"budget.trials": 4}), out, progress=False)
    study = _study(out)
    assert study.trials[0].user_attrs["named_point"] == "wanda+owl"
    final = __import__("json").loads((out / "final.json").read_text())
    names = {r["name"] for r in final["rows"] if r["kind"] == "baseline"}
    assert names == {"wanda", "owl"}
    owl = next(r for r in final["rows"] if r["name"] == "owl")
    assert isinstance(owl["plan"]["sparsity"], list) and abs(owl["sparsity"] - 0.6) < 0.02  # per-row rounding on tiny layers
    assert (out / "layerwise.png").exists()
    text = report.read_text()
    assert "best named method" in text.splitlines()[2]


def test_report_names_the_searcher_settings_that_apply():
    from automl_prune.search.study.searcher_configs import summary as searcher_text

    tpe = {"name": "tpe", "seed": 0, "population": 20, "n_startup_trials": 10, "seed_named_points": True}
    assert searcher_text(tpe) == "tpe (seed 0, n startup trials 10)"
    assert searcher_text({**tpe, "name": "nsga3", "population": 24}) == "nsga3 (seed 0, population 24)"
    assert "not seeded" in searcher_text({**tpe, "seed_named_points": False})


STAGED = {"budget.trials": 14, "polish.selection": {"stages": [{"tokens": 128, "keep": 2}, {"tokens": 256, "keep": 1}],
                                                   "candidates": 2, "seqlen": 64}}


def _copy(run, tmp_path):
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def test_polishing_a_sparsity_front_per_point(polished_front):
    import json

    from automl_prune.search.study.results import change_vs_baseline

    path, out = polished_front
    storage = f"sqlite:///{out / 'study.db'}"
    front = _study(out)
    final = json.loads((out / "final.json").read_text())
    for point in (0.4, 0.6):
        study = optuna.load_study(study_name=f"automl-prune-polish-{point:g}", storage=storage)
        trials = study.get_trials()
        assert len(trials) == 7 and study.user_attrs["target_sparsity"] == point
        named = [t.user_attrs["named_point"] for t in trials if "named_point" in t.user_attrs]
        assert named == ["wanda+owl", "wanda", "wanda+owl+dsnot", "wanda+dsnot"]  # the named methods first
        assert all("pattern.sparsity" not in t.params for t in trials)
        for t in trials:  # every polished candidate sits at the target (OWL renormalised, uniform per-row floor)
            assert abs(t.user_attrs["realised_sparsity"] - point) < 0.01
        # the front's best trials at this target were started from (unless a named point already was)
        starts = front_starts(front, point, 2)
        assert starts
        for number, params in starts:
            assert front.trials[number].params["pattern.sparsity"] == point
            assert any(t.params == params for t in trials)
        for t in (t for t in trials if "front_trial" in t.user_attrs):
            source = front.trials[t.user_attrs["front_trial"]]
            assert {k: v for k, v in source.params.items() if k != "pattern.sparsity"} == t.params
        # the polished plan is the trial with the lowest KL of the point's study (found here from the
        # trials' values, which differ), Wanda's value is its trial's, and the final comparison (and
        # so polished/sparsity-P.yaml, below) carries that trial's plan
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        assert len(done) == 7 and len({t.value for t in done}) > 1
        lowest = min(done, key=lambda t: t.value)
        record = next(r for r in final["polish"] if r["point"] == point)
        assert (record["best"]["trial"], record["best"]["value"]) == (lowest.number, lowest.value)
        assert record["best"]["params"] == lowest.params
        wanda = next(t for t in trials if t.user_attrs.get("named_point") == "wanda")
        assert (record["wanda"]["trial"], record["wanda"]["value"]) == (wanda.number, wanda.value)
        row = next(r for r in final["rows"] if r["kind"] == "searched" and r["target"] == point)
        assert row["trial"] == lowest.number
        assert PruningPlan.from_dict(row["plan"]) == PruningPlan.from_dict(lowest.user_attrs["plan"])
    searched = {r["name"]: r for r in final["rows"] if r["kind"] == "searched"}
    assert set(searched) == {"polished 0.4", "polished 0.6"}
    for name, r in searched.items():
        base = [b for b in final["rows"] if b["kind"] == "baseline" and b["target"] == r["target"]]
        assert [b["name"] for b in base] == ["wanda"] and r["ppl"] > 1 and len(r["values"]) == 2
    assert [p["point"] for p in final["polish"]] == [0.4, 0.6]
    text = (out / "report.md").read_text()
    assert "### Polishing" in text and "**polished 0.4**" in text and "Polishing (2 target sparsities)" in text
    changes = change_vs_baseline(final)
    assert [t for t, _ in changes] == [0.4, 0.6]
    wanda04 = next(b["ppl"] for b in final["rows"] if b["kind"] == "baseline" and b["target"] == 0.4)
    assert changes[0][1] == pytest.approx(100 * (searched["polished 0.4"]["ppl"] / wanda04 - 1))
    saved = PruningPlan.load(out / "polished" / "sparsity-0.4.yaml")
    meta = json.loads((out / "meta.json").read_text())
    assert saved.to_dict() == {**searched["polished 0.4"]["plan"], **load_config(path).plan_origin(meta)}  # + where it came from


def test_a_polished_front_resumes_and_refuses_another_objective(polished_front, tmp_path):
    import json

    path, run = polished_front
    out = _copy(run, tmp_path)
    before = {p["point"]: p["best"]["trial"] for p in json.loads((out / "final.json").read_text())["polish"]}
    run_search(load_config(path, {"budget.trials": 14}), out, progress=False)  # no new trial, the same polished plans
    again = json.loads((out / "final.json").read_text())
    assert {p["point"]: p["best"]["trial"] for p in again["polish"]} == before
    assert all(p["new_trials"] == 0 for p in again["polish"])
    with pytest.raises(UserError, match="polishing study"):  # another polishing objective: not mixed in
        run_search(load_config(path, {"budget.trials": 14, "polish.objective": {"name": "kl", "params": {"windows": 2}}}),
                   out, progress=False)


def test_polish_selection_chooses_each_point_in_stages_and_keeps_the_stage_values(polished_front, tmp_path):
    """polish.selection: the point's best 2 distinct candidates and the named points selected in stages on
    fresh tokens (the study's selection mechanism), the last stage's best chosen; nothing re-searched."""
    import json

    path, run = polished_front
    out = _copy(run, tmp_path)
    run_search(load_config(path, STAGED), out, progress=False)
    selected = json.loads((out / "final.json").read_text())
    for p in selected["polish"]:
        first, last = p["selection"]["stages"]
        assert p["new_trials"] == 0 and [first["tokens"], last["tokens"]] == [128, 256]
        assert "wanda" in [c["named_point"] for c in first["candidates"]] and len(last["candidates"]) == 2
        assert p["best"]["trial"] == p["selection"]["selected"] == last["candidates"][0]["trial"]
    assert "last stage: selected" in (out / "report.md").read_text()
    # the stage values are kept in the point's study: a re-run reads them instead of scoring again
    study = optuna.load_study(study_name="automl-prune-polish-0.4", storage=f"sqlite:///{out / 'study.db'}")
    kept = study.user_attrs["selection"]
    wanda_trial = next(c["trial"] for c in selected["polish"][0]["selection"]["stages"][0]["candidates"]
                       if c["named_point"] == "wanda")
    for st in kept["stages"]:  # Wanda best in every stage, as if measured so: no stage scores anything again
        st["values"][str(wanda_trial)] = -1.0
    study.set_user_attr("selection", kept)
    run_search(load_config(path, STAGED), out, progress=False)
    reread = json.loads((out / "final.json").read_text())
    assert reread["polish"][0]["best"]["trial"] == wanda_trial and reread["polish"][0]["best"]["named_point"] == "wanda"
    assert reread["polish"][1]["best"]["trial"] == selected["polish"][1]["best"]["trial"]
    meta = json.loads((out / "meta.json").read_text())  # polishing time adds up over the runs
    assert meta["polish_seconds_total"] > meta["polish_seconds"] > 0
    assert f"{meta['polish_seconds_total']:.0f} s over every run" in (out / "report.md").read_text()


def test_polishing_needs_a_sparsity_front(tmp_path, tiny_llama_dir, data_dir):
    path = _config(tmp_path, tiny_llama_dir, data_dir, polish={"points": [0.5]})
    with pytest.raises(UserError, match="polish"):
        load_config(path)
    with pytest.raises(UserError, match="polish.points"):
        load_config(tiny_front_config(tmp_path, tiny_llama_dir, data_dir, polish={"points": [1.5]}))
    with pytest.raises(UserError, match="polish.space"):
        load_config(tiny_front_config(tmp_path, tiny_llama_dir, data_dir,
                                  polish={"points": [0.5], "space": {"metric": {"name": "no-such-space"}}}))
    kl1 = {"name": "kl", "params": {"windows": 1}}
    stages = {"stages": [{"tokens": 128, "keep": 1}], "seqlen": 64}
    with pytest.raises(UserError, match=r"'polish.selection.objective'.*does not read"):  # held-out ppl: no probe windows
        load_config(tiny_front_config(tmp_path, tiny_llama_dir, data_dir, polish={"points": [0.5], "objective": kl1, "selection": {
            **stages, "objective": {"name": "ppl"}}}))
    with pytest.raises(UserError, match=r"polish.selection.stages\[0\].tokens.*multiple of 64"):
        load_config(tiny_front_config(tmp_path, tiny_llama_dir, data_dir, polish={"points": [0.5], "objective": kl1, "selection": {
            **stages, "stages": [{"tokens": 100, "keep": 1}]}}))
    with pytest.raises(UserError, match=r"'selection'.*several.*polish.selection"):  # a front's selection is per point
        load_config(tiny_front_config(tmp_path, tiny_llama_dir, data_dir, polish={"points": [0.5], "objective": kl1},
                                      selection=stages))


def test_objectives_read_no_more_probe_windows_than_the_probe_has(tmp_path, tiny_llama_dir, data_dir):
    with pytest.raises(UserError, match=r"objectives\[1\].params.windows.*reads 3 probe windows.*has 2"):
        load_config(_config(tmp_path, tiny_llama_dir, data_dir, objectives=[
            {"name": "layer_recon"}, {"name": "kl", "params": {"windows": 3}}]))
    with pytest.raises(UserError, match=r"polish.objective.params.windows"):
        load_config(tiny_front_config(tmp_path, tiny_llama_dir, data_dir,
                                      polish={"points": [0.5], "objective": {"name": "calib_ppl", "params": {"windows": 5}}}))
    assert load_config(_config(tmp_path, tiny_llama_dir, data_dir, objectives=[{"name": "kl", "params": {"windows": 2}}]))


def test_report_says_when_the_timeout_cut_the_budget_and_reads_history_on_a_log_axis():
    from automl_prune.search.outputs.plots import history_scale
    from automl_prune.search.outputs.report import budget_lines

    cut = " ".join(budget_lines({"budget": {"trials": 80, "timeout": 360.0}, "stopped_by": "timeout", "finished_trials": 62}))
    assert "timeout (360 s) after 62 of 80 trials" in cut and "Run the same command again" in cut
    assert "spent" in " ".join(budget_lines({"budget": {"trials": 80}, "stopped_by": "trials", "finished_trials": 80}))
    assert history_scale([1.2, 1.3, 400.0]) == "log" and history_scale([1.2, 1.3, 1.5]) == "linear"
    assert history_scale([-1.0, 2.0]) == "linear"
    from automl_prune.search.outputs.plots import clipped_view

    low, top = clipped_view([1.50 + 0.01 * i for i in range(18)] + [2.9, 4.3])  # two outliers far above the band
    assert 1.4 < low < 1.5 and 1.6 < top < 1.9
    assert clipped_view([1.5, 1.6, 1.7, 1.8]) is None


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_polishing_starts_from_the_fronts_best_trials_whichever_the_direction(direction):
    study = optuna.create_study(directions=[direction, "minimize"])
    for i, value in enumerate([3.0, 1.0, 2.0, 5.0]):
        study.add_trial(optuna.trial.create_trial(params={"pattern.sparsity": 0.5, "x": float(i)},
                                                  distributions={"pattern.sparsity": optuna.distributions.FloatDistribution(0, 1),
                                                                 "x": optuna.distributions.FloatDistribution(0, 10)},
                                                  values=[value, 0.5]))
    starts = front_starts(study, 0.5, 2)
    assert [n for n, _ in starts] == ([1, 2] if direction == "minimize" else [3, 0])


def test_a_config_of_an_older_study_with_the_flat_searcher_settings_still_loads_and_resumes():
    """Studies written before each searcher had its own settings stored every setting for every
    searcher (at its default): their config.yaml loads, and the fingerprint keeps that flat form."""
    from automl_prune.search.study.config import StudyConfig
    from automl_prune.search.study.fingerprint import study_fingerprint
    from automl_prune.search.study.searcher_configs import FLAT_DEFAULTS

    flat = {**FLAT_DEFAULTS, "name": "nsga3", "population": 8}
    config = StudyConfig.model_validate({"searcher": flat})
    assert config.searcher.model_dump() == {"name": "nsga3", "seed": 0, "seed_named_points": True, "population": 8}
    assert study_fingerprint(config)["searcher"] == flat
