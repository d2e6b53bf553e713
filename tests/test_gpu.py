"""The CUDA paths, checked against the CPU on a tiny model: run by scripts/gpu-check.sh on a GPU
machine (``pytest -m gpu``); skipped where there is no CUDA (a platform skip, not a missing
prerequisite). Each compares what the CUDA path computes with the CPU's, which the rest of the
suite checks against hand computations."""

from __future__ import annotations

import copy

import pytest
import torch
from own_ray import OwnRay

from automl_prune.calibration.dense import dense_statistics
from automl_prune.data import calibration_windows, evaluation_windows
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.models.adapters import model_linears
from automl_prune.models.loading import load_model
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import plan_for_method

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a GPU machine)")]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir, data_dir):
    loaded = load_model(str(tiny_llama_dir), device="cpu")
    ids = calibration_windows("c4", loaded.tokenizer, nsamples=4, seqlen=64, seed=0, data_dir=data_dir).input_ids
    return loaded, ids


def test_capture_on_cuda_matches_the_cpu(tiny, tmp_path):
    loaded, ids = tiny
    cpu = dense_statistics(loaded.model, ids, with_gram=True, use_cache=False, progress=False).stats
    model = copy.deepcopy(loaded.model).to("cuda")
    gpu = dense_statistics(model, ids, with_gram=True, device="cuda", use_cache=False, progress=False).stats
    for a, b in zip(cpu, gpu):
        for name, st in a.items():
            assert torch.allclose(st.gram.cpu(), b[name].gram.cpu(), rtol=1e-3, atol=1e-4), name
            assert st.n_tokens == b[name].n_tokens


@pytest.mark.parametrize("method", ["wanda", "ria", "sparsegpt", "admm", "dsnot"])
def test_every_method_and_update_on_cuda_matches_the_cpu(tiny, method):
    loaded, ids = tiny
    plan = plan_for_method(method, sparsity=0.5)
    cpu_model, gpu_model = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model).to("cuda")
    a = prune_model(cpu_model, plan, ids, use_cache=False, progress=False)
    b = prune_model(gpu_model, plan, ids, device="cuda", use_cache=False, progress=False)
    assert a.realised_sparsity == pytest.approx(b.realised_sparsity, abs=1e-3)
    for name, lin in model_linears(cpu_model).items():
        other = model_linears(gpu_model)[name].weight.detach().cpu()
        agree = ((lin.weight == 0) == (other == 0)).float().mean().item()
        assert agree > 0.99, f"{method} {name}: masks agree on {agree:.4f} of the weights"
        if method in ("sparsegpt", "admm"):
            assert torch.allclose(lin.weight, other, atol=5e-3), name


def test_offloaded_blocks_stream_through_cuda_as_in_memory(tiny_llama_dir, data_dir):
    whole = load_model(str(tiny_llama_dir), device="cuda")
    streamed = load_model(str(tiny_llama_dir), device="cuda", offload="cpu")
    ids = evaluation_windows("wikitext2", whole.tokenizer, seqlen=128, max_windows=2, data_dir=data_dir).input_ids
    a = perplexity(whole.model, ids, device="cuda", progress=False)["ppl"]
    b = perplexity(streamed.model, ids, device="cuda", store=streamed.store, progress=False)["ppl"]
    assert b == pytest.approx(a, rel=1e-4)


@pytest.fixture
def own_ray(monkeypatch):
    """This test's own Ray (own_ray.py), ended after it."""
    own = OwnRay()
    monkeypatch.setenv("RAY_TMPDIR", own.root)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield own
    own.stop()


def test_a_ray_worker_with_a_gpu_per_trial_scores_on_the_gpu(tmp_path, tiny_llama_dir, data_dir, own_ray):
    from study_configs import tiny_study_config

    from automl_prune.search.run import run_search
    from automl_prune.search.study.config import load_config

    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, device="cuda", budget={"trials": 3},
                             final={"top": 0, "fidelity_sample": 0, "baselines": []})
    run_search(load_config(path, {"executor": "ray", "ray.gpus_per_trial": 1.0}), tmp_path / "run", progress=False)
    import optuna

    study = optuna.load_study(study_name=None, storage=f"sqlite:///{tmp_path / 'run' / 'study.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
