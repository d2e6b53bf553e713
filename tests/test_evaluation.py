"""Perplexity follows the reference protocol; KL to the dense model is zero for itself."""

from __future__ import annotations

import math

import pytest
import torch

from automl_prune.evaluation.kl import kl_to_dense, swapped_weights
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from tiny_models import tiny_model


def _ids(model, n=3, seqlen=24):
    return torch.randint(0, model.config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_perplexity_is_exp_of_mean_token_nll_like_the_references():
    model = tiny_model("llama")
    ids = _ids(model)
    # Wanda's eval_ppl: per window loss (mean over seqlen - 1 predictions), exp(sum(loss * seqlen) / (n * seqlen))
    with torch.no_grad():
        losses = [float(model(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss) for i in range(ids.shape[0])]
    expected = math.exp(sum(losses) / len(losses))
    for batch_size in (1, 2):
        got = perplexity(model, ids, batch_size=batch_size, progress=False)
        assert got["ppl"] == pytest.approx(expected, rel=1e-5)
        assert got["n_tokens"] == ids.shape[0] * (ids.shape[1] - 1)


def test_kl_is_zero_to_itself_and_positive_after_pruning():
    model = tiny_model("phi")
    ids = _ids(model)
    modules = {f"{i}.{n}": m for i, b in enumerate(decoder_blocks(model)) for n, m in prunable_linears(b).items()}
    dense = {k: m.weight.data.clone() for k, m in modules.items()}
    assert kl_to_dense(model, modules, dense, ids, progress=False)["kl"] == pytest.approx(0.0, abs=1e-6)
    for m in modules.values():
        m.weight.data[:, ::2] = 0
    pruned = {k: m.weight.data for k, m in modules.items()}
    assert kl_to_dense(model, modules, dense, ids, progress=False)["kl"] > 1e-4
    with swapped_weights(modules, dense):
        assert all(modules[k].weight.data_ptr() == dense[k].data_ptr() for k in modules)
    assert all(modules[k].weight.data_ptr() == pruned[k].data_ptr() for k in modules)
