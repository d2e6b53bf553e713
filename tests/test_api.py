"""The Python API (automl_prune/api.py): the README's example, on a tiny model, and the CLI as its
caller (the same plan, masks and figures)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import automl_prune as ap
from automl_prune.errors import UserError
from automl_prune.models.adapters import model_linears

CAL = dict(source="c4", nsamples=4, seqlen=64)


def test_importing_the_package_loads_no_model_stack():
    code = "import sys, automl_prune; print(any(m == 'torch' or m.startswith('automl_prune.api') for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_the_api_names_resolve_and_unknown_names_fail():
    assert {"load", "prune", "evaluate", "search", "Calibration", "Heldout"} <= set(ap.__all__)
    assert ap.Calibration().nsamples == 128 and ap.Heldout().windows is None  # the papers' protocol by default
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ap.nope  # noqa: B018


def test_load_prune_evaluate_on_a_tiny_model(tiny_llama_dir, data_dir, tmp_path):
    model = ap.load(str(tiny_llama_dir))
    heldout = ap.Heldout(source="wikitext2", seqlen=64, windows=2)
    dense = ap.evaluate(model, heldout, data_dir=data_dir)
    assert dense.n_windows == 2 and dense.n_tokens == 2 * 63 and dense.ppl > 1
    lines = []
    result = ap.prune(model, "wanda", sparsity=0.5, calibration=ap.Calibration(**CAL), heldout=heldout, kl=True,
                      data_dir=data_dir, out=tmp_path / "pruned", say=lines.append)
    assert result.model is model and abs(result.realised_sparsity - 0.5) < 1e-3
    zeros = sum(int((lin.weight == 0).sum()) for lin in model_linears(model.model).values())
    total = sum(lin.weight.numel() for lin in model_linears(model.model).values())
    assert zeros / total == pytest.approx(result.realised_sparsity, abs=1e-6)  # pruned in place
    e = result.evaluation["wikitext2"]
    assert e["dense"]["ppl"] == pytest.approx(dense.ppl) and e["pruned"]["ppl"] != e["dense"]["ppl"] and e["kl"]["kl"] > 0
    assert ap.evaluate(model, heldout, data_dir=data_dir).ppl == pytest.approx(e["pruned"]["ppl"])
    assert any(line.startswith("plan:  wanda") for line in lines) and any(line.startswith("model: ") for line in lines)
    metrics = json.loads((tmp_path / "pruned" / "metrics.json").read_text())
    assert metrics["realised_sparsity"] == round(result.realised_sparsity, 6)
    assert result.plan.model is not None and result.plan.model.blocks == len(model.model.model.layers)


def test_the_cli_is_a_caller_of_the_api(tiny_llama_dir, data_dir, tmp_path):
    """`automl-prune prune` and `ap.prune` with the same settings give the same masks and figures."""
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "automl_prune.cli", "prune", "--model", str(tiny_llama_dir), "--method", "ria",
                    "--pattern", "2:4", "--calib", "c4", "--nsamples", "4", "--seqlen", "64", "--eval", "wikitext2",
                    "--eval-seqlen", "64", "--eval-windows", "2", "--data-dir", str(data_dir), "--out", str(out)],
                   check=True, capture_output=True, text=True)
    cli = json.loads((out / "metrics.json").read_text())
    model = ap.load(str(tiny_llama_dir))
    result = ap.prune(model, "ria", pattern="2:4", calibration=ap.Calibration(**CAL),
                      heldout=ap.Heldout(source="wikitext2", seqlen=64, windows=2), data_dir=data_dir)
    assert result.plan.to_dict() == cli["plan"]
    assert result.evaluation["wikitext2"]["pruned"]["ppl"] == pytest.approx(cli["evaluation"]["wikitext2"]["pruned"]["ppl"])
    again = ap.load(str(out))
    for name, lin in model_linears(model.model).items():
        assert torch.equal(lin.weight == 0, model_linears(again.model)[name].weight == 0), name


def test_a_plan_that_does_not_fit_is_refused_before_calibration(tiny_llama_dir, data_dir):
    plan = ap.as_plan("wanda", sparsity=0.5).with_fields(layer_sparsity={"99.mlp.up_proj": 0.7})
    with pytest.raises(UserError, match="99.mlp.up_proj"):
        ap.prune(str(tiny_llama_dir), plan, calibration=ap.Calibration(**CAL), data_dir=data_dir)
    with pytest.raises(UserError, match="either a sparsity"):
        ap.as_plan("wanda", sparsity=0.5, pattern="2:4")


@pytest.mark.slow
def test_the_readme_example_runs_as_written(tmp_path):
    """The README's Python example, exactly as written (SmolLM2 and wiki-offline from their wheels)."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## From Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    sparsity, ppl = done.stdout.split()[-3:-1]
    assert abs(float(sparsity) - 0.5) < 1e-3 and 1 < float(ppl) == pytest.approx(float(done.stdout.split()[-1]))
