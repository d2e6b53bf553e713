"""The command line: help, and user mistakes give one line and a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from automl_prune.cli import main


def _run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "automl_prune.cli", *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_lists_the_commands():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in ("prune", "eval", "stats"):
        assert cmd in out.stdout
    prune_help = _run("prune", "--help").stdout
    for flag in ("--model", "--method", "--plan", "--sparsity", "--pattern", "--calib", "--nsamples", "--seqlen", "--seed",
                 "--out", "--data-dir", "--quick", "--mode"):
        assert flag in prune_help


@pytest.mark.parametrize("args, expected", [
    (["--method", "wandaa", "--sparsity", "0.5"], "unknown method"),
    (["--method", "wanda", "--sparsity", "1.5"], "sparsity"),
    (["--method", "wanda", "--pattern", "5:4"], "pattern"),
    (["--method", "wanda", "--pattern", "2:4", "--sparsity", "0.5"], "not both"),
    (["--plan", "no/such/plan.yaml"], "does not exist"),
    (["--method", "wanda", "--nsamples", "0"], "--nsamples"),
])
def test_bad_prune_options_fail_before_loading_a_model(args, expected, tmp_path, capsys):
    code = main(["prune", "--model", "no-such-model", *args, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert expected in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_unknown_model_is_one_line_error(tmp_path):
    out = _run("eval", "--model", str(tmp_path / "missing-model"), "--data", "wikitext2")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "missing-model" in out.stderr


def test_bad_plan_file_names_the_field(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("metric: {name: bawa, alpha: fast}\nsparsity: 0.5\n")
    out = _run("prune", "--model", "x", "--plan", str(plan), "--out", str(tmp_path / "o"))
    assert out.returncode == 2 and "alpha" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------- search -> report -> prune --plan

def _mask_hash_of_folder(folder) -> str:
    """The search's mask hash (which weights are zero in every prunable layer) of an exported model."""
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from automl_prune.models.loading import load_model
    from automl_prune.search.execution.candidate import masks_digest

    model = load_model(str(folder), device="cpu").model
    modules = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in prunable_linears(b).items()}
    return masks_digest(modules)


def test_search_report_and_prune_the_plan_offline_reproduce_the_masks(tmp_path, tiny_llama_dir, data_dir, capsys,
                                                                     monkeypatch):
    import json

    import optuna
    import yaml

    from study_configs import tiny_study_config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("AUTOML_PRUNE_DATA_DIR", raising=False)
    config = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, budget={"trials": 6},
                               final={"top": 1, "fidelity_sample": 3, "baselines": ["wanda"]})
    out = tmp_path / "run"
    assert main(["search", "--config", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "report:" in printed.out and "held-out ppl" in printed.out
    best = yaml.safe_load((out / "best.yaml").read_text())
    # the plan file carries the search's calibration (absolute data folder) and held-out text
    assert best["calibration"] == {"source": "c4", "nsamples": 4, "seqlen": 64, "seed": 0, "split": None,
                                   "text_field": None, "data_dir": str(data_dir.resolve())}
    assert best["heldout"] == {"source": "wikitext2", "seqlen": 128, "windows": 2}
    assert best["model"]["name"] == str(tiny_llama_dir) and best["model"]["blocks"] == 3  # what it was made for
    report = (out / "report.md").read_text()
    assert "The trial budget (6) is spent" in report and "a diagnostic, never a selection" in report
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    chosen = study.best_trial
    if chosen.user_attrs.get("named_point"):
        assert f"(named point {chosen.user_attrs['named_point']})" in report

    # `report DIR` rebuilds the same report from the study and final.json
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").read_text() == report

    # --no-final on the finished study keeps the earlier held-out comparison
    assert main(["search", "--config", str(config), "--out", str(out), "--no-final"]) == 0
    kept = (out / "report.md").read_text()
    assert "## Held-out comparison" in kept and "from an earlier run" in kept
    capsys.readouterr()

    # no --calib / --data-dir / --eval: the prune takes them from the plan, offline, and gets the searched masks
    pruned = tmp_path / "pruned"
    assert main(["prune", "--model", str(tiny_llama_dir), "--device", "cpu", "--plan", str(out / "best.yaml"),
                 "--out", str(pruned)]) == 0
    said = capsys.readouterr().out
    assert "from the plan file: calibration c4 4 x 64, seed 0" in said and "evaluation wikitext2 seqlen 128" in said
    metrics = json.loads((pruned / "metrics.json").read_text())
    assert metrics["calibration"]["n_windows"] == 4 and metrics["calibration"]["seqlen"] == 64
    assert list(metrics["evaluation"]) == ["wikitext2"]
    assert _mask_hash_of_folder(pruned) == chosen.user_attrs["mask_hash"]


def test_eval_prints_a_summary_and_json_on_request(tiny_llama_dir, data_dir, tmp_path, capsys):
    import json

    args = ["eval", "--model", str(tiny_llama_dir), "--device", "cpu", "--data-dir", str(data_dir), "--data", "wikitext2",
            "--seqlen", "64", "--windows", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("model ") and "wikitext2: perplexity" in out and "--json FILE" in out
    assert len(out.splitlines()) == 3
    assert main([*args, "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["results"]["wikitext2"]["n_windows"] == 2
