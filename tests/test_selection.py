"""Multi-fidelity selection: fresh windows apart from the calibration and probe windows, every
candidate of a stage on the same windows, stage values kept in the study, the selected plan
written as best.yaml and compared held out with the fast objective's best."""

from __future__ import annotations

import json

import optuna
import pytest
import yaml

from automl_prune.data.windows import windows_sha256
from automl_prune.errors import UserError
from automl_prune.search.execution import scoring as SC
from automl_prune.search.study.config import load_config
from automl_prune.search.run import run_search
from study_configs import tiny_study_config

STAGES = {"stages": [{"tokens": 128, "keep": 3}, {"tokens": 256, "keep": 1}], "candidates": 5, "seqlen": 64,
          "objective": {"name": "kl", "params": {"topk": 64}}}


def test_fresh_windows_overlap_no_calibration_or_probe_window(smollm2_tokenizer, data_dir):
    from automl_prune.data.api import fresh_windows
    from automl_prune.data.sources import resolve_corpus
    from automl_prune.data.windows import DocumentTokens, document_positions, make_encoder

    corpus = resolve_corpus("c4", "calibration", data_dir=data_dir)
    tokens = DocumentTokens(corpus.documents, make_encoder(smollm2_tokenizer, False))
    calib = document_positions(tokens, nsamples=32, length=512, seed=0)
    probe = document_positions(tokens, nsamples=8, length=512, seed=1)
    taken = [(d, s, 512) for d, s in calib + probe]
    fresh = document_positions(tokens, nsamples=64, length=512, seed=100, exclude=taken)
    for i, (d, s) in enumerate(fresh):
        others = taken + [(d2, s2, 512) for j, (d2, s2) in enumerate(fresh) if j != i]
        assert not any(d == d2 and s < s2 + n and s2 < s + 512 for d2, s2, n in others)
    # the same draws through the public function, and the reference sampler unchanged without exclusions
    w = fresh_windows("c4", smollm2_tokenizer, nsamples=64, seqlen=512, seed=100, data_dir=data_dir,
                      avoid=[dict(nsamples=32, seqlen=512, seed=0), dict(nsamples=8, seqlen=512, seed=1)])
    assert w.info["purpose"] == "selection" and w.input_ids.shape == (64, 512)
    assert w.input_ids[0].tolist() == tokens[fresh[0][0]][fresh[0][1]:fresh[0][1] + 512].tolist()
    assert document_positions(tokens, nsamples=32, length=512, seed=0) == calib
    with pytest.raises(UserError, match="too few windows"):
        document_positions(tokens, nsamples=5000, length=512, seed=3, exclude=taken)


def test_selection_stages_pick_the_plan_and_a_rerun_scores_nothing_again(tmp_path, tiny_llama_dir, data_dir, monkeypatch):
    seen: list[tuple[int, str]] = []
    real = SC.score_candidate

    def spy(ctx, plan, objectives, **kw):
        seen.append((ctx.probe_ids.shape[1] * ctx.probe_ids.shape[0], windows_sha256(ctx.probe_ids)))
        return real(ctx, plan, objectives, **kw)

    monkeypatch.setattr(SC, "score_candidate", spy)
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, selection=STAGES, budget={"trials": 12},
                             final={"top": 1, "fidelity_sample": 3, "baselines": ["wanda"]})
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False)
    final = json.loads((out / "final.json").read_text())
    sel = final["selection"]
    first, second = sel["stages"]
    assert len(first["candidates"]) >= 5 and len(second["candidates"]) == 3  # 5 best + named points; then the kept 3
    assert {c["trial"] for c in second["candidates"]} == set(first["kept"])
    assert second["kept"] == [sel["selected"]] and second["candidates"][0]["trial"] == sel["selected"]
    # every candidate of a stage read the same windows, and the two stages read different ones
    by_stage = {}
    for tokens, digest in seen:
        by_stage.setdefault(tokens, set()).add(digest)
    assert sorted(by_stage) == [128, 256] and all(len(d) == 1 for d in by_stage.values())
    assert by_stage[128] == {first["windows_sha256"]} and by_stage[256] == {second["windows_sha256"]}
    # the selected plan is best.yaml and the final comparison shows it next to the fast objective's best
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    chosen = study.get_trials()[sel["selected"]]
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["metric"] == chosen.user_attrs["plan"]["metric"]
    labels = {r.get("selected_by") for r in final["rows"] if r["kind"] == "searched"}
    assert "selection stages" in labels and (sel["fast_best"] == sel["selected"] or "fast objective" in labels)
    assert [r["stage"] for r in sel["fidelity"]["stages"]] == [1, 2]
    report = (out / "report.md").read_text()
    assert "### Selection" in report and "selected by the stages" in report
    # a re-run (e.g. after a kill) scores no candidate again and selects the same plan
    seen.clear()
    run_search(load_config(path), out, progress=False, final=False)
    assert seen == []
    assert optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}").user_attrs[
        "selected_trial"] == sel["selected"]


def test_stage_reconstruction_updates_the_survivors_only_and_the_delivered_plan(tmp_path, tiny_llama_dir, data_dir,
                                                                                 monkeypatch):
    """selection.reconstruction: the search's trials stay mask-only (cheap), every candidate a stage
    scores is updated (ADMM), and the plan the study delivers (best.yaml, final rows) carries it."""
    staged: list[tuple[str, bool]] = []
    real = SC.score_candidate

    def spy(ctx, plan, objectives, **kw):
        staged.append((plan.update, plan.admm.gradual))
        return real(ctx, plan, objectives, **kw)

    monkeypatch.setattr(SC, "score_candidate", spy)
    recon = {"update": "admm", "admm": {"gradual": True, "iterations": 4, "gradual_iterations": 3}}
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, selection={**STAGES, "reconstruction": recon},
                             budget={"trials": 8}, final={"top": 1, "fidelity_sample": 0, "baselines": ["wanda"]})
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False)
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    assert all(t.user_attrs["plan"].get("update", "none") == "none" for t in study.get_trials() if "plan" in t.user_attrs)
    assert staged and set(staged) == {("admm", True)}
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["update"] == "admm" and best["admm"]["iterations"] == 4 and best["admm"]["gradual"] is True
    final = json.loads((out / "final.json").read_text())
    searched = [r for r in final["rows"] if r["kind"] == "searched"]
    assert searched and all(r["plan"]["update"] == "admm" for r in searched)


@pytest.mark.parametrize("override, message", [
    ({"selection": {**STAGES, "reconstruction": {"update": "admm"}},
      "space": {"metric": {"name": "bawa"}, "allocation": "uniform", "pattern": {"name": "unstructured", "sparsity": 0.5},
                "reconstruction": {"update": ["none", "sparsegpt"]}}}, "update the candidates a second time"),
    ({"objectives": [{"name": "layer_recon"}, {"name": "sparsity"}]}, "several"),
    ({"selection": {**STAGES, "objective": {"name": "layer_recon"}}}, "does not read probe"),
    ({"selection": {**STAGES, "stages": [{"tokens": 100, "keep": 2}]}}, "multiple of 64"),
    ({"selection": {**STAGES, "stages": [{"tokens": 128, "keep": 2}, {"tokens": 64, "keep": 1}]}}, "more tokens"),
    ({"selection": {**STAGES, "objective": {"name": "kl", "params": {"windows": 2}}}}, "decide the windows"),
])
def test_bad_selection_configs_are_refused_before_loading(tmp_path, tiny_llama_dir, data_dir, override, message):
    over = {"selection": STAGES, **override}
    with pytest.raises(UserError, match=message):
        load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **over))


def test_final_zero_shot_average_of_the_selected_plan_and_the_best_baseline(tmp_path, tiny_llama_dir, data_dir):
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, selection=STAGES, budget={"trials": 8},
                             final={"top": 1, "fidelity_sample": 0, "baselines": ["wanda", "magnitude"],
                                    "zero_shot": {"tasks": ["piqa", "winogrande"], "limit": 4}})
    out = tmp_path / "run"
    report = run_search(load_config(path), out, progress=False).read_text()
    rows = json.loads((out / "final.json").read_text())["rows"]
    scored = [r for r in rows if r.get("zero_shot")]
    searched = [r for r in rows if r["kind"] == "searched"]
    best_baseline = min((r for r in rows if r["kind"] == "baseline"), key=lambda r: r["ppl"])
    assert {id(r) for r in scored} == {id(r) for r in searched} | {id(best_baseline)}
    for r in scored:
        z = r["zero_shot"]
        assert 0 <= z["acc"] <= 1 and set(z["tasks"]) == {"piqa", "winogrande"} and z["limit"] == 4
    assert "zero-shot acc / acc_norm" in report and "first 4 documents" in report


def test_a_sequential_stage_scores_its_candidates_as_applied_block_by_block(tmp_path, tiny_llama_dir, data_dir):
    """``mode: sequential`` on a stage: the same candidates on the same windows get other values (the
    plans applied block by block on the pruned earlier blocks), recorded with the stage; the one-shot
    stages keep the stored-values key they had before stages had a mode."""
    from automl_prune.search.phases.selection import setting

    values = {}
    for mode in ("one-shot", "sequential"):
        stages = {**STAGES, "stages": [STAGES["stages"][0], {**STAGES["stages"][1], "mode": mode}]}
        (tmp_path / mode).mkdir()
        path = tiny_study_config(tmp_path / mode, tiny_llama_dir, data_dir, selection=stages, budget={"trials": 6},
                                 final={"top": 0, "fidelity_sample": 0, "baselines": []})
        config = load_config(path)
        run_search(config, tmp_path / mode / "run", progress=False, final=False)
        record = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / mode / 'run' / 'study.db'}").user_attrs
        values[mode] = record["selection"]["stages"][1]
        if mode == "one-shot":
            assert "mode" not in json.dumps(setting(config)["selection"]["stages"])
    assert values["one-shot"].keys() == values["sequential"].keys()
    assert values["one-shot"]["windows_sha256"] == values["sequential"]["windows_sha256"]
    assert all(values["one-shot"]["values"][k] != values["sequential"]["values"][k] for k in values["one-shot"]["values"])
