"""The built-in recipe (search/study/recipe.py) and the mode choice of the final comparison
(phases/final.py): its settings follow from the target, the update and the hours alone; its phases
run in order and resume; the mode the plan is delivered in is chosen without reading held-out text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from automl_prune.errors import UserError
from automl_prune.pruning.plan import PruningPlan
from automl_prune.search.phases import final as F
from automl_prune.search.run import run_search
from automl_prune.search.study.config import load_config


def _write(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_recipe_settings_follow_from_the_target_alone(tmp_path):
    a = load_config(_write(tmp_path / "a.yaml", {"model": "m1", "recipe": {"sparsity": 0.6, "hours": 2}}))
    b = load_config(_write(tmp_path / "b.yaml", {"model": "other", "recipe": {"sparsity": 0.6, "hours": 2}}))
    assert {**a.model_dump(), "model": None} == {**b.model_dump(), "model": None}  # nothing depends on the model
    assert a.budget.timeout == 0.30 * 7200 and a.allocation_search.budget.timeout == 0.35 * 7200
    assert a.selection.reconstruction.update == "admm" and a.final.modes == ["one-shot", "sequential"]
    assert "admm" in a.final.baselines and "owl" in a.final.baselines
    nm = load_config(_write(tmp_path / "c.yaml", {"recipe": {"pattern": "2:4", "update": "none"}}))
    assert nm.allocation_search is None and nm.selection.reconstruction is None  # N:M: no allocation to evolve
    assert nm.space["pattern"] == {"name": "nm", "pattern": "2:4"} and "admm" not in nm.final.baselines
    own = load_config(_write(tmp_path / "d.yaml", {"recipe": {"sparsity": 0.5}, "budget": {"trials": 7}}))
    assert own.budget.trials == 7 and own.budget.timeout == 0.30 * 3600  # a config's own settings win, key by key


@pytest.mark.parametrize("recipe, message", [
    ({"sparsity": 0.5, "hours": 0.01}, "hours 0.01 is too small: the metric search gets 11 s"),
    ({"sparsity": 0.5, "pattern": "2:4"}, "one target"),
    ({"update": "admm"}, "one target"),
    ({"sparsity": 1.5}, "recipe.sparsity"),
])
def test_a_recipe_it_cannot_run_is_refused_with_the_reason(tmp_path, recipe, message):
    with pytest.raises(UserError, match=message):
        load_config(_write(tmp_path / "r.yaml", {"recipe": recipe}))


def test_the_command_line_runs_the_recipe_without_a_config(tmp_path):
    done = subprocess.run([sys.executable, "-m", "automl_prune.cli", "search", "--sparsity", "0.5", "--hours", "0.02",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2 and "the allocation evolution gets 25 s" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


def test_the_recipe_runs_its_phases_in_order_resumes_and_chooses_the_mode_on_fresh_tokens(
        tmp_path, tiny_llama_dir, data_dir, monkeypatch):
    path = _write(tmp_path / "auto.yaml", {
        "model": str(tiny_llama_dir), "device": "cpu", "data_dir": str(data_dir), "cache_dir": str(tmp_path / "cache"),
        "calibration": {"source": "c4", "nsamples": 4, "seqlen": 64, "seed": 0},
        "probe": {"nsamples": 2, "seqlen": 64, "seed": 1},
        "heldout": {"source": "wikitext2", "seqlen": 128, "windows": 2},
        "recipe": {"sparsity": 0.5, "update": "auto", "hours": 1},
        # budgets for a tiny model (the recipe's own are sized in hours)
        "budget": {"trials": 5}, "searcher": {"n_startup_trials": 3},
        "selection": {"stages": [{"tokens": 128, "keep": 2}, {"tokens": 256, "keep": 1}], "candidates": 3},
        "allocation_search": {"budget": {"trials": 8},
                              "searcher": {"offspring": 3, "survivors": 1, "stage_tokens": 128, "stage_pool": 2}},
        "final": {"baselines": ["wanda", "admm"], "mode_choice": {"tokens": 128}},
    })
    seen = {}
    real = F.choose_mode

    def without_heldout(state, plan, modes, **kw):
        """The mode choice with the held-out windows taken away: reading them would fail."""
        kept, state.ctx.heldout_ids = state.ctx.heldout_ids, None
        try:
            seen["choice"] = real(state, plan, modes, **kw)
        finally:
            state.ctx.heldout_ids = kept
        return seen["choice"]

    monkeypatch.setattr(F, "choose_mode", without_heldout)
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert list(meta["phases"]) == ["load model", "statistics", "profile", "objectives", "search", "selection",
                                    "allocation phase", "polish", "final comparison"]
    result = json.loads((out / "final.json").read_text())
    choice = result["mode_choice"]
    assert choice == seen["choice"] and set(choice["values"]) == {"one-shot", "sequential"}
    assert all(isinstance(v, float) for v in choice["values"].values())  # both scored, without the held-out text
    assert choice["mode"] == min(choice["values"], key=lambda m: (choice["values"][m], m != "one-shot"))
    assert PruningPlan.load(out / "best.yaml").mode == choice["mode"]  # the plan file records the chosen mode
    searched = [r for r in result["rows"] if r["kind"] == "searched"]
    assert {r["mode"] for r in searched} == {"one-shot", "sequential"}
    assert {r["name"] for r in result["rows"] if r["kind"] == "baseline"} >= {"wanda (one-shot)", "wanda (sequential)",
                                                                               "admm (sequential)"}
    report = (out / "report.md").read_text()
    assert f"delivered **{choice['mode']}**" in report and "the held-out text was not read for the choice" in report
    assert "Recipe (1.0 h): load model" in report and "final comparison" in report.split("Recipe (1.0 h)")[1]
    # resumed: nothing is searched again, the same plan and mode are delivered
    best = (out / "best.yaml").read_text()
    run_search(load_config(out / "config.yaml"), out, progress=False, final=False)
    again = json.loads((out / "meta.json").read_text())
    assert again["trials_this_run"] == 0 and again["allocation_phase"]["trials_this_run"] == 0
    assert (out / "best.yaml").read_text() == best
