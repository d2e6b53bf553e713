"""The score cache: masks cut from a stored rank equal the selection's, every time; bounded memory;
a context applying the plan its weights hold does no work."""

from __future__ import annotations

import copy

import pytest
import torch

from automl_prune.candidate_context import CandidateContext
from automl_prune.metrics.spec import BaWAMetric, WandaMetric
from automl_prune.pruning.masks import unstructured_mask
from automl_prune.pruning.plan import PruningPlan
from automl_prune.pruning.score_cache import ScoreCache, group_rank, rank_mask


def scores(out, inp, seed=0, quantized=False):
    s = torch.rand(out, inp, generator=torch.Generator().manual_seed(seed))
    return (s * 4).floor() if quantized else s  # quantized: ties everywhere


@pytest.mark.parametrize("group", ["row", "matrix"])
@pytest.mark.parametrize("quantized", [False, True])
def test_rank_cut_equals_the_selection_at_every_sparsity(group, quantized):
    s = scores(23, 57, seed=3, quantized=quantized)
    rank = group_rank(s, group)
    assert rank.dtype == torch.int16  # 57 inputs, 1,311 weights: both fit int16
    for sparsity in [0.0, 0.01, 0.25, 0.5, 0.5 + 1e-9, 0.7, 0.93, 1.0, 12 / 57]:
        assert torch.equal(rank_mask(rank, sparsity, group), unstructured_mask(s, sparsity, group=group)), sparsity


def test_a_whole_matrix_group_past_int16_ranks_in_int32():
    s = scores(200, 200, seed=4, quantized=True)  # 40,000 weights in one group
    rank = group_rank(s, "matrix")
    assert rank.dtype == torch.int32
    assert torch.equal(rank_mask(rank, 0.61, "matrix"), unstructured_mask(s, 0.61, group="matrix"))


def test_the_cache_scores_once_per_metric_and_layer_then_cuts():
    cache = ScoreCache(budget_bytes=10**6)
    s = scores(16, 32, seed=1, quantized=True)
    calls = []

    def compute():
        calls.append(1)
        return s

    for sparsity in [0.5, 0.3, 0.8, 0.5]:
        mask = cache.mask("wanda|row", "0.q", "row", sparsity, compute)
        assert torch.equal(mask, unstructured_mask(s, sparsity, group="row"))
    assert len(calls) == 1 and cache.hits == 3
    assert cache.bytes == s.numel() * 2  # the scores became an int16 rank
    cache.mask("other|row", "0.q", "row", 0.5, lambda: s + 1)
    assert list(cache.entries) == ["wanda|row", "other|row"]


def test_the_cache_stays_within_its_budget_and_can_be_off():
    s = scores(16, 32)
    size = s.numel() * 4
    cache = ScoreCache(budget_bytes=2 * size)
    for i in range(4):
        cache.mask(f"m{i}|row", "0.q", "row", 0.5, lambda: s)
        assert cache.bytes <= 2 * size
    assert list(cache.entries) == ["m2|row", "m3|row"]  # least recently used first out
    off = ScoreCache(budget_bytes=0)
    calls = []
    for _ in range(2):
        off.mask("m|row", "0.q", "row", 0.5, lambda: calls.append(1) or s)
    assert len(calls) == 2 and off.bytes == 0
    small = ScoreCache(budget_bytes=size - 1)  # a layer that does not fit is not kept
    small.mask("m|row", "0.q", "row", 0.5, lambda: s)
    assert small.bytes == 0 and not small.entries


def test_column_block_groups_are_not_cached():
    cache = ScoreCache()
    s = scores(8, 256)
    assert torch.equal(cache.mask("m|column_block", "0.q", "column_block", 0.5, lambda: s),
                       unstructured_mask(s, 0.5, group="column_block"))
    assert not cache.entries


@pytest.fixture(scope="module")
def ctx(calibrated):
    model, stats, _ = calibrated
    return CandidateContext(copy.deepcopy(model), stats=stats, probe_ids=torch.zeros(1, 8, dtype=torch.long))


def masks(ctx) -> dict[str, torch.Tensor]:
    return {k: (m.weight == 0).clone() for k, m in ctx.modules.items()}


@pytest.mark.parametrize("metric", [WandaMetric(), BaWAMetric(alpha=0.5, beta=0.5, gamma=1.0, norm="l1"),
                                    BaWAMetric(alpha=0.0, beta=0.0, gamma=0.0, norm="l2")], ids=["wanda", "bawa", "magnitude-like"])
@pytest.mark.parametrize("group", ["row", "matrix"])
def test_allocation_candidates_on_a_context_give_the_masks_of_a_fresh_prune(ctx, metric, group):
    """Per-block allocations of one metric, scored in a row as a search does: every mask equals the
    one the uncached path computes."""
    n = len(ctx.blocks)
    ctx.scores.clear()
    hits = ctx.scores.hits
    allocations = [0.5, [0.3, 0.6, 0.45, 0.65][:n], [0.7, 0.2, 0.5, 0.55][:n], 0.5, [0.61, 0.39, 0.5, 0.5][:n]]
    uncached = ScoreCache(budget_bytes=0)
    for sparsity in allocations:
        plan = PruningPlan(metric=metric, sparsity=sparsity, group=group)
        with ctx.applied(plan):
            cached = masks(ctx)
        ctx.scores, saved = uncached, ctx.scores
        with ctx.applied(plan):
            fresh = masks(ctx)
        ctx.scores = saved
        assert cached.keys() == fresh.keys() and all(torch.equal(cached[k], fresh[k]) for k in cached)
    assert ctx.scores.hits - hits == len(ctx.modules) * (len(allocations) - 1)
    assert uncached.hits == 0


def test_applying_the_plan_the_weights_hold_does_no_work(ctx):
    plan = PruningPlan(metric=WandaMetric(), sparsity=0.5)
    first = ctx.apply(plan)
    again = ctx.apply(PruningPlan.from_dict(plan.to_dict()))
    assert again is first
    ctx.restore()
    assert all(torch.equal(m.weight, ctx.dense[k]) for k, m in ctx.modules.items())
    third = ctx.apply(plan)
    assert third is not first and third.realised_sparsity == first.realised_sparsity
    ctx.restore()
