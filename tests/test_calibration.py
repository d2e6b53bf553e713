"""Calibration statistics: accumulation, block-by-block capture (one-shot and sequential), cache."""

from __future__ import annotations

import pytest
import torch

from automl_prune.calibration.blocks import BlockRunner
from automl_prune.calibration.cache import load_stats, save_stats
from automl_prune.calibration.capture import capture_statistics
from automl_prune.calibration.dense import dense_statistics
from automl_prune.calibration.stats import LinearStats
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from tiny_models import FAMILIES, tiny_model


def _ids(n=3, seqlen=16, vocab=256, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_linear_stats_match_direct_computation():
    x = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(1)) * 3
    s = LinearStats.empty(7, with_gram=True)
    s.update(x[:1], n_seqs=1)
    s.update(x[1:], n_seqs=1)
    flat = x.reshape(-1, 7).double()
    assert s.n_tokens == 10 and s.n_seqs == 2
    torch.testing.assert_close(s.sum, flat.sum(0))
    torch.testing.assert_close(s.sumsq, flat.square().sum(0))
    torch.testing.assert_close(s.abs_sum, flat.abs().sum(0))
    torch.testing.assert_close(s.absmax, flat.abs().amax(0).float())
    torch.testing.assert_close(s.gram.double(), flat.T @ flat, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(s.std, flat.std(0, unbiased=False))
    torch.testing.assert_close(s.scaler_row, flat.square().sum(0) / 2)
    torch.testing.assert_close(s.l2, flat.norm(dim=0))


def _reference_inputs(model, ids):
    """Inputs of every prunable linear seen in one plain forward of the whole model."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = []
    for i, block in enumerate(decoder_blocks(model)):
        for name, lin in prunable_linears(block).items():
            key = f"{i}.{name}"
            handles.append(lin.register_forward_pre_hook(lambda m, a, key=key: seen.setdefault(key, []).append(a[0].detach())))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in handles:
        h.remove()
    return {k: torch.cat([t.reshape(-1, t.shape[-1]) for t in v]) for k, v in seen.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_one_shot_capture_equals_plain_forward(family):
    model = tiny_model(family)
    ids = _ids(vocab=model.config.vocab_size)
    runner = BlockRunner(model, decoder_blocks(model), ids, batch_size=2)
    stats = capture_statistics(runner, prunable_linears, mode="one-shot", with_gram=True, progress=False)
    ref = _reference_inputs(model, ids)
    assert len(stats) == len(decoder_blocks(model))
    for i, block_stats in enumerate(stats):
        for name, s in block_stats.items():
            x = ref[f"{i}.{name}"].double()
            assert s.n_tokens == x.shape[0]
            torch.testing.assert_close(s.sumsq, x.square().sum(0), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(s.gram.double(), x.T @ x, rtol=1e-3, atol=1e-3)


def test_block_runner_reproduces_model_output_with_sliding_window_layers():
    """Gemma-3 gives sliding and global layers different masks: each block must get its own."""
    model = tiny_model("gemma3")
    blocks = decoder_blocks(model)
    ids = _ids(n=2, seqlen=32, vocab=model.config.vocab_size)
    out = {}
    h = blocks[-1].register_forward_hook(lambda m, a, o: out.setdefault("y", o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    h.remove()
    runner = BlockRunner(model, blocks, ids, batch_size=1)
    for i in range(len(blocks)):
        runner.run(i)
    torch.testing.assert_close(torch.cat(runner.hidden), out["y"], rtol=1e-4, atol=1e-5)


def test_shared_inputs_share_statistics():
    model = tiny_model("llama")
    runner = BlockRunner(model, decoder_blocks(model), _ids(), batch_size=3)
    stats = capture_statistics(runner, prunable_linears, mode="one-shot", progress=False)[0]
    assert stats["self_attn.q_proj"] is stats["self_attn.k_proj"] is stats["self_attn.v_proj"]
    assert stats["mlp.gate_proj"] is stats["mlp.up_proj"]
    assert stats["self_attn.o_proj"] is not stats["self_attn.q_proj"]


def test_sequential_statistics_see_pruned_earlier_blocks():
    model = tiny_model("llama")
    ids = _ids()
    one = capture_statistics(BlockRunner(model, decoder_blocks(model), ids), prunable_linears, mode="one-shot", progress=False)

    def zero_half(i, block, stats):
        for lin in prunable_linears(block).values():
            lin.weight.data[:, : lin.weight.shape[1] // 2] = 0

    seq = capture_statistics(BlockRunner(model, decoder_blocks(model), ids), prunable_linears, mode="sequential",
                             on_block=zero_half, progress=False)
    q = "self_attn.q_proj"
    torch.testing.assert_close(seq[0][q].sumsq, one[0][q].sumsq)  # block 0 sees the same (dense) inputs
    assert not torch.allclose(seq[1][q].sumsq, one[1][q].sumsq)  # block 1 sees the pruned block 0


def test_cache_round_trip_and_corruption(tmp_path):
    model = tiny_model("qwen2")
    ids = _ids()
    first = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert first.info["cache"] == "miss"
    second = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert second.info["cache"] == "hit"
    for a, b in zip(first.stats, second.stats):
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name].sumsq, b[name].sumsq)
            torch.testing.assert_close(a[name].gram, b[name].gram)
            assert a[name].n_tokens == b[name].n_tokens
    # a cache with Gram matrices also serves a request without them
    assert dense_statistics(model, ids, with_gram=False, cache_dir=tmp_path, progress=False).info["cache"] == "hit"
    # other windows or other weights: another key
    assert dense_statistics(model, _ids(seed=5), cache_dir=tmp_path, progress=False).info["cache"] == "miss"
    # a corrupt file is detected and rebuilt
    entry = tmp_path / "stats" / first.info["cache_key"][:32]
    (entry / "block-0000.safetensors").write_bytes(b"not a safetensors file")
    assert load_stats(tmp_path, first.info["cache_key"]) is None
    rebuilt = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert rebuilt.info["cache"] == "miss"
    assert load_stats(tmp_path, first.info["cache_key"]) is not None


def test_cache_rejects_a_manifest_for_another_key(tmp_path):
    s = LinearStats.empty(4)
    s.update(torch.ones(1, 2, 4), 1)
    entry = save_stats(tmp_path, "a" * 64, [{"l": s}], settings={})
    assert load_stats(tmp_path, "a" * 64)[0]["l"].n_tokens == 2
    (entry / "manifest.json").write_text((entry / "manifest.json").read_text().replace("a" * 64, "b" * 64))
    assert load_stats(tmp_path, "a" * 64) is None
