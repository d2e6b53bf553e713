"""Real SmolLM2-135M: exact sparsity, perplexity ordering, export/reload identity, the CLI end to end.

Calibration here is small (16 x 256 C4 windows) to keep CI fast; the README table uses 32 x 512.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from automl_prune.data import calibration_windows, evaluation_windows
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.export import export_pruned
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.models.loading import load_model
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import plan_for_method

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def setup(smollm2, data_dir, session_cache):
    tok = smollm2.tokenizer
    calib = calibration_windows("c4", tok, nsamples=16, seqlen=256, seed=0, data_dir=data_dir)
    evalw = evaluation_windows("wikitext2", tok, seqlen=512, max_windows=6, data_dir=data_dir)
    dense = {k: v.clone() for k, v in smollm2.model.state_dict().items()}
    dense_ppl = perplexity(smollm2.model, evalw.input_ids, progress=False)["ppl"]
    return dict(calib=calib, eval=evalw, dense=dense, dense_ppl=dense_ppl)


def _restore(model, state):
    model.load_state_dict(state)


def _linears(model):
    return {f"{i}.{n}": m for i, b in enumerate(decoder_blocks(model)) for n, m in prunable_linears(b).items()}


def test_wanda_is_exact_per_row_and_between_dense_and_magnitude(smollm2, setup, session_cache, tmp_path):
    model = smollm2.model
    ppl = {}
    for method in ("magnitude", "wanda"):
        _restore(model, setup["dense"])
        result = prune_model(model, plan_for_method(method, sparsity=0.5), setup["calib"].input_ids,
                             cache_dir=session_cache, progress=False, windows_info=setup["calib"].info)
        ppl[method] = perplexity(model, setup["eval"].input_ids, progress=False)["ppl"]
        if method == "wanda":
            for name, lin in _linears(model).items():
                assert torch.all((lin.weight == 0).sum(1) == lin.weight.shape[1] // 2), name
            assert result.realised_sparsity == pytest.approx(0.5, abs=1e-6)
            # export and reload: the saved model is the pruned one
            out = export_pruned(model, smollm2.tokenizer, tmp_path / "wanda50", result.plan, {"ppl": ppl[method]})
            again = load_model(str(out), device="cpu")
            assert perplexity(again.model, setup["eval"].input_ids, progress=False)["ppl"] == pytest.approx(ppl["wanda"], rel=1e-5)
            for name, lin in _linears(again.model).items():
                assert torch.equal(lin.weight, _linears(model)[name].weight), name
    _restore(model, setup["dense"])
    assert setup["dense_ppl"] < ppl["wanda"] < ppl["magnitude"], (setup["dense_ppl"], ppl)


def test_cli_prune_end_to_end(data_dir, session_cache, tmp_path):
    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "automl_prune.cli", "prune", "--model", "smollm2-135m", "--method", "wanda",
           "--pattern", "2:4", "--calib", "c4", "--nsamples", "4", "--seqlen", "128", "--eval", "wikitext2",
           "--eval-seqlen", "256", "--eval-windows", "2", "--data-dir", str(data_dir), "--cache-dir", str(session_cache),
           "--kl", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "dense ppl" in run.stdout and "pruned ppl" in run.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    # 2:4 zeroes exactly half; a few weights of the dequantized GGUF are zero already
    assert 0.5 <= metrics["realised_sparsity"] < 0.5005
    assert metrics["calibration"]["seed"] == 0 and metrics["calibration"]["seqlen"] == 128
    assert metrics["mode"] == "one-shot" and "torch" in metrics["environment"]["versions"]
    ev = metrics["evaluation"]["wikitext2"]
    assert ev["pruned"]["ppl"] > ev["dense"]["ppl"] and ev["kl"]["kl"] > 0
    assert (out / "model.safetensors").exists() and (out / "plan.yaml").exists()
