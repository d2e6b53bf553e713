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
