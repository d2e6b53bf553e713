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


# ----- the candidate's fast path: same weights, same counts, fewer passes -----------------------------
def test_zeroing_by_a_multiply_gives_masked_fills_weights():
    from automl_prune.pruning.layer import zeroed

    gen = torch.Generator().manual_seed(5)
    w = torch.randn(37, 53, generator=gen)
    w[0, :6] = torch.tensor([-0.0, 0.0, float("inf"), float("-inf"), float("nan"), -0.0])
    mask = torch.rand(37, 53, generator=gen) < 0.5
    mask[0, :6] = torch.tensor([True, True, True, False, True, False])
    want = w.masked_fill(mask, 0.0)
    want[0, 5] = 0.0  # the one documented difference: a kept -0.0 comes out +0.0
    for inplace in (False, True):
        got = zeroed(w.clone(), mask, inplace=inplace)
        # bit for bit (a pruned negative weight is +0.0, never -0.0; pruned inf and nan become 0)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), inplace
        assert torch.equal(got, w.masked_fill(mask, 0.0))  # as values (-0.0 == 0.0): masked_fill's
    finite = w[1:]
    got = zeroed(finite.clone(), mask[1:], inplace=True)
    assert torch.equal(got.view(torch.int32), finite.masked_fill(mask[1:], 0.0).view(torch.int32))


def test_zero_counts_of_a_context_prune_include_the_dense_zeros(calibrated):
    """A candidate's zero count comes from its masks when the dense weights have no zero, and from
    the weights when they have some; both equal the count of the pruned weights' zeros."""
    model, stats, _ = calibrated
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[:, :3] = 0.0  # dense zeros, some kept by the mask, some pruned
    c = CandidateContext(model, stats=stats, probe_ids=torch.zeros(1, 8, dtype=torch.long))
    for sparsity in (0.5, [0.3, 0.6, 0.45, 0.65][: len(c.blocks)], 0.5):
        result = c.apply(PruningPlan(metric=WandaMetric(), sparsity=sparsity))
        for k, m in c.modules.items():
            assert result.layers[k]["zeros"] == int((m.weight == 0).sum()), k
        c.restore()


def test_a_plan_that_fails_half_way_is_still_restored(calibrated):
    """The context skips restoring weights it knows to be dense; a plan that raises after pruning
    some layers leaves them changed, and the next restore puts them back."""
    from automl_prune.errors import PruningError

    model, stats, _ = calibrated
    broken = [dict(b) for b in stats]
    last = len(broken) - 1
    layer = next(iter(broken[last]))
    st = copy.copy(broken[last][layer])
    st.sumsq = torch.full_like(st.sumsq, float("nan"))
    broken[last][layer] = st
    c = CandidateContext(copy.deepcopy(model), stats=broken, probe_ids=torch.zeros(1, 8, dtype=torch.long))
    c.restore()
    with pytest.raises(PruningError):
        c.apply(PruningPlan(metric=WandaMetric(), sparsity=0.5))
    assert any(not torch.equal(m.weight, c.dense[k]) for k, m in c.modules.items())  # block 0 was pruned
    c.restore()
    assert all(torch.equal(m.weight, c.dense[k]) for k, m in c.modules.items())


@pytest.mark.parametrize("method", ["wanda", "magnitude", "sparsegpt"])
def test_allocation_moves_prune_only_the_layers_whose_target_changed(calibrated, method):
    """Consecutive candidates that differ in their allocation alone (as a search scores them, no
    restore between): only the layers whose target changed are pruned again, and every candidate's
    weights and per-layer result equal a fresh prune of the dense model."""
    from automl_prune.pruning.apply import prune_model
    from automl_prune.pruning.methods import plan_for_method

    from automl_prune.calibration.dense import dense_statistics
    from tiny_models import byte_windows

    model, stats, _ = calibrated
    if method == "sparsegpt":  # an update: the statistics need the Gram matrices
        stats = dense_statistics(model, byte_windows(4, 32)[0], with_gram=True, use_cache=False, progress=False).stats
    c = CandidateContext(copy.deepcopy(model), stats=stats, probe_ids=torch.zeros(1, 8, dtype=torch.long))
    n = len(c.blocks)
    per_block = len(c.modules) // n
    base = plan_for_method(method, sparsity=0.5)
    allocations = [0.5, [0.6] + [0.5] * (n - 1), [0.6, 0.4] + [0.5] * (n - 2), [0.6, 0.4] + [0.5] * (n - 2),
                   [0.5, 0.4] + [0.55] * (n - 2)]
    pruned = [None, per_block, per_block, None, (n - 1) * per_block]  # None: nothing to compare (first; the plan held)
    for alloc, want in zip(allocations, pruned):
        plan = base.model_copy(update={"sparsity": alloc})
        result = c.apply(plan)
        fresh_model = copy.deepcopy(model)
        fresh = prune_model(fresh_model, plan, stats=stats, progress=False)
        fresh_modules = CandidateContext(fresh_model, stats=stats, probe_ids=torch.zeros(1, 8, dtype=torch.long)).modules
        assert all(torch.equal(m.weight, fresh_modules[k].weight) for k, m in c.modules.items()), alloc
        strip = lambda layers: {k: {f: v for f, v in d.items() if f != "seconds"} for k, d in layers.items()}  # noqa: E731
        assert strip(result.layers) == strip(fresh.layers)
        if want is not None:
            assert result.info["layers_pruned"] == want, alloc
    c.restore()
    assert all(torch.equal(m.weight, c.dense[k]) for k, m in c.modules.items())


def test_a_failed_allocation_move_leaves_no_stale_state(calibrated):
    """A plan that fails after pruning some layers: the context no longer claims to hold the plan
    before it, so applying that plan again prunes it (rather than returning at once)."""
    from automl_prune.errors import PruningError

    model, stats, _ = calibrated
    n = len(stats)
    broken = [dict(b) for b in stats]
    layer = next(iter(broken[n - 1]))
    st = copy.copy(broken[n - 1][layer])
    st.sumsq = torch.full_like(st.sumsq, float("nan"))  # Wanda's scores of this layer: NaN
    broken[n - 1][layer] = st
    c = CandidateContext(copy.deepcopy(model), stats=broken, probe_ids=torch.zeros(1, 8, dtype=torch.long))
    first = PruningPlan(metric=WandaMetric(), sparsity=[0.5] * (n - 1) + [0.0])  # the broken layer is left dense
    c.apply(first)
    with pytest.raises(PruningError):  # blocks 0.. re-pruned at 0.3, then the broken layer fails
        c.apply(first.model_copy(update={"sparsity": [0.3] * n}))
    again = c.apply(first)
    fresh = CandidateContext(copy.deepcopy(model), stats=broken, probe_ids=torch.zeros(1, 8, dtype=torch.long))
    want = fresh.apply(first)
    assert all(torch.equal(m.weight, fresh.modules[k].weight) for k, m in c.modules.items())
    assert again.realised_sparsity == want.realised_sparsity
