"""Objectives on tiny models: dense values, agreement with direct computations, early stopping,
registry errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from automl_prune.calibration.dense import dense_statistics
from automl_prune.candidate_context import CandidateContext
from automl_prune.errors import UserError
from automl_prune.pruning.apply import PruneResult
from automl_prune.pruning.methods import plan_for_method
from objectives import ObjectiveError, TrialStopped, available, make_objective
from objectives import probe as P

OBJECTIVES = {"layer_recon", "model_recon", "kl", "ppl", "calib_ppl", "sparsity"}


def _ids(model, n=3, seqlen=24, seed=0):
    return torch.randint(3, model.config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _sampled(model, n=3, seqlen=24, seed=0):
    """Windows sampled from the model itself: its perplexity on them is low, a pruned model's higher."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (n, 1), generator=gen)
    for _ in range(seqlen - 1):
        probs = torch.softmax(2 * model(input_ids=ids, use_cache=False).logits[:, -1].float(), -1)  # temperature 0.5
        ids = torch.cat([ids, torch.multinomial(probs, 1, generator=gen)], 1)
    return ids


def _context(family="llama", seed=0, sharpen=True) -> CandidateContext:
    model = tiny_model(family, seed=seed)
    if sharpen:  # a random model predicts nearly uniformly; make its predictions confident
        with torch.no_grad():
            model.model.norm.weight.mul_(8)
    ids, heldout = (_sampled(model, seed=0), _sampled(model, n=2, seed=1)) if sharpen else (_ids(model), None)
    stats = dense_statistics(model, ids, with_gram=True, use_cache=False, progress=False).stats
    return CandidateContext(model, stats=stats, probe_ids=ids, heldout_ids=heldout)


@pytest.fixture(scope="module")
def ctx() -> CandidateContext:
    return _context()


def _dense_result(ctx: CandidateContext) -> PruneResult:
    ctx.restore()
    layers = {k: dict(zeros=int((m.weight == 0).sum()), numel=m.weight.numel()) for k, m in ctx.modules.items()}
    return PruneResult(plan_for_method("magnitude", sparsity=0.0), layers)


def _all(**overrides):
    params = dict(layer_recon=dict(weighting="fisher", fisher_windows=2), kl=dict(topk=None))
    params.update(overrides)
    return {name: make_objective(name, **params.get(name, {})) for name in sorted(OBJECTIVES)}


def test_every_objective_is_registered_with_a_direction():
    assert OBJECTIVES <= set(available())
    for name in OBJECTIVES:
        obj = make_objective(name)
        assert obj.name == name and obj.direction in ("minimize", "maximize")
    assert make_objective("sparsity").direction == "maximize"


@pytest.mark.parametrize("pattern", ["0.5", "2:4"])
def test_zero_for_the_dense_model_and_worse_after_pruning(ctx, pattern):
    objs = _all()
    for o in objs.values():
        o.prepare(ctx)
    dense = {n: o(ctx, _dense_result(ctx)) for n, o in objs.items()}
    for name in ("layer_recon", "model_recon", "kl"):
        assert dense[name] == pytest.approx(0.0, abs=1e-6), name
    assert dense["sparsity"] == 0.0
    plan = plan_for_method("wanda", sparsity=0.5) if pattern == "0.5" else plan_for_method("wanda", pattern=pattern)
    result = ctx.apply(plan)
    pruned = {n: o(ctx, result) for n, o in objs.items()}
    for name in ("layer_recon", "model_recon", "kl"):
        assert pruned[name] > 1e-6, name
    for name in ("ppl", "calib_ppl"):
        assert pruned[name] > dense[name] and math.isfinite(pruned[name]), name
    assert pruned["sparsity"] == pytest.approx(0.5, abs=0.01)
    ctx.restore()


@pytest.mark.parametrize("weighting", ["uniform", "energy", "log", "block", "fisher", "fisher_layer"])
def test_every_layer_recon_weighting_is_finite_and_orders_sparsities(ctx, weighting):
    obj = make_objective("layer_recon", weighting=weighting, fisher_windows=1)
    obj.prepare(ctx)
    values = [obj(ctx, ctx.apply(plan_for_method("wanda", sparsity=s))) for s in (0.3, 0.6)]
    ctx.restore()
    assert all(math.isfinite(v) for v in values) and values[0] < values[1]


def test_layer_recon_equals_the_error_computed_from_the_raw_inputs(ctx):
    inputs: dict[str, list[torch.Tensor]] = {k: [] for k in ctx.modules}
    handles = [m.register_forward_pre_hook(lambda _m, a, k=k: inputs[k].append(a[0].detach().reshape(-1, a[0].shape[-1])))
               for k, m in ctx.modules.items()]
    with torch.no_grad():
        ctx.restore()
        ctx.model(input_ids=ctx.probe_ids, use_cache=False)
    for h in handles:
        h.remove()
    result = ctx.apply(plan_for_method("ria", sparsity=0.5))
    obj = make_objective("layer_recon", weighting="uniform")
    errors = obj.layer_errors(ctx)
    rel = []
    for k, m in ctx.modules.items():
        X = torch.cat(inputs[k]).double()
        dW = (ctx.dense[k] - m.weight.detach()).double()
        direct = float((X @ dW.T).square().sum())
        energy = float((X @ ctx.dense[k].double().T).square().sum())
        assert errors[k][0] == pytest.approx(direct, rel=1e-3), k
        assert errors[k][1] == pytest.approx(energy, rel=1e-3), k
        rel.append(direct / energy)
    assert obj(ctx, result) == pytest.approx(sum(rel) / len(rel), rel=1e-3)
    ctx.restore()


def test_kl_matches_a_direct_full_logits_computation_and_topk_is_a_close_lower_bound(ctx):
    result = ctx.apply(plan_for_method("magnitude", sparsity=0.5))
    with torch.no_grad():
        logq = F.log_softmax(ctx.model(input_ids=ctx.probe_ids, use_cache=False).logits.float(), -1)
        ctx.restore()
        logp = F.log_softmax(ctx.model(input_ids=ctx.probe_ids, use_cache=False).logits.float(), -1)
    direct = float((logp.exp() * (logp - logq)).sum(-1).mean())
    ctx.apply(plan_for_method("magnitude", sparsity=0.5))
    exact = make_objective("kl", topk=None)
    exact.prepare(ctx)
    assert exact(ctx, result) == pytest.approx(direct, rel=1e-4)
    approx = make_objective("kl", topk=32)
    approx.prepare(ctx)
    value = approx(ctx, result)
    assert value <= direct * (1 + 1e-5) and value > 0.5 * direct
    full_vocab = make_objective("kl", topk=10_000)  # topk >= vocabulary: exact again
    full_vocab.prepare(ctx)
    assert full_vocab(ctx, result) == pytest.approx(direct, rel=1e-4)
    ctx.restore()


def test_probe_logits_match_the_models_own_logits_with_softcapping():
    ctx = _context("gemma2", sharpen=False)  # Gemma-2 soft-caps its final logits
    with torch.no_grad():
        expected = ctx.model(input_ids=ctx.probe_ids, use_cache=False).logits.float()
    hidden = P.forward_to_head(ctx.model, ctx.blocks, ctx.probe_ids)
    assert torch.allclose(P.head_logits(ctx.model, hidden), expected, atol=1e-5)
    result = ctx.apply(plan_for_method("wanda", sparsity=0.5))
    obj = make_objective("model_recon", form="logits_fro")  # chunked path (no Gram shortcut with softcapping)
    obj.prepare(ctx)
    with torch.no_grad():
        pruned = ctx.model(input_ids=ctx.probe_ids, use_cache=False).logits.float()
    assert obj(ctx, result) == pytest.approx(float((pruned - expected).norm()), rel=1e-4)
    ctx.restore()


def test_calib_ppl_equals_the_perplexity_of_the_probe_windows(ctx):
    from automl_prune.evaluation.perplexity import perplexity

    result = ctx.apply(plan_for_method("wanda", sparsity=0.5))
    obj = make_objective("calib_ppl")
    obj.prepare(ctx)
    assert obj(ctx, result) == pytest.approx(perplexity(ctx.model, ctx.probe_ids, progress=False)["ppl"], rel=1e-5)
    ctx.restore()


@pytest.mark.parametrize("form", ["logits_fro", "final_rel", "final_cos", "hidden_rel", "hidden_rms", "hidden_cos"])
def test_model_recon_forms_and_the_literal_optishear_error(ctx, form):
    obj = make_objective("model_recon", form=form)
    obj.prepare(ctx)
    assert obj(ctx, _dense_result(ctx)) == pytest.approx(0.0, abs=1e-6)
    result = ctx.apply(plan_for_method("wanda", sparsity=0.5))
    value = obj(ctx, result)
    assert value > 0
    if form == "logits_fro":
        with torch.no_grad():
            pruned = ctx.model(input_ids=ctx.probe_ids, use_cache=False).logits.float()
            ctx.restore()
            dense = ctx.model(input_ids=ctx.probe_ids, use_cache=False).logits.float()
        assert value == pytest.approx(float((pruned - dense).norm()), rel=1e-3)
    ctx.restore()


def test_model_recon_stops_early_only_when_the_reporter_says_so(ctx):
    obj = make_objective("model_recon", form="hidden_cos")
    obj.prepare(ctx)
    n_blocks = len(ctx.blocks)
    seen: list[tuple[float, int]] = []

    def keep_going(value: float, step: int) -> bool:
        seen.append((value, step))
        return False

    result = ctx.apply(plan_for_method("wanda", sparsity=0.5))
    value = obj(ctx, result, keep_going)
    assert [s for _, s in seen] == list(range(n_blocks))
    assert all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))  # accumulated: non-decreasing
    assert seen[-1][0] == pytest.approx(value)

    calls: list[int] = []

    def stop_at_first(value: float, step: int) -> bool:
        calls.append(step)
        return True

    result = ctx.apply(plan_for_method("stade", sparsity=0.5))  # a new candidate: a real, stopped forward
    with pytest.raises(TrialStopped):
        obj(ctx, result, stop_at_first)
    assert calls == [0]
    assert all(run[0] is not result for run in ctx.memo["probe_runs"].values())  # a stopped run is not cached
    assert obj(ctx, result) > 0  # and scoring again without a reporter works
    with pytest.raises(TrialStopped):  # a cached run replays the reports
        obj(ctx, result, stop_at_first)
    ctx.restore()


def test_probe_objectives_share_one_forward_per_candidate(ctx, monkeypatch):
    objs = [make_objective("kl"), make_objective("calib_ppl"), make_objective("model_recon", form="final_cos")]
    for o in objs:
        o.prepare(ctx)
    result = ctx.apply(plan_for_method("wanda", sparsity=0.5))
    calls = []
    original = P.forward_to_head
    monkeypatch.setattr(P, "forward_to_head", lambda *a, **k: calls.append(1) or original(*a, **k))
    for o in objs:
        o(ctx, result)
    assert len(calls) == 1
    ctx.restore()


def test_nan_outputs_raise_an_objective_error(ctx):
    objs = _all()
    for o in objs.values():
        o.prepare(ctx)
    result = ctx.apply(plan_for_method("wanda", sparsity=0.5))
    w = next(iter(ctx.modules.values())).weight.data
    w[tuple(int(i) for i in (w != 0).nonzero()[0])] = float("nan")  # a kept weight: the masks stay the same
    # the weights changed outside apply (against the context's contract): drop what is memoised from them
    ctx.candidate_memo.clear()
    ctx.memo.pop("layer_recon_known", None)
    for name in ("layer_recon", "model_recon", "kl", "ppl", "calib_ppl"):
        with pytest.raises(ObjectiveError):
            objs[name](ctx, result)
    assert not ctx.memo["layer_recon_known"].entries or all(
        bool(torch.isfinite(r).all()) for r in ctx.memo["layer_recon_known"].entries.values())  # no NaN rows kept
    ctx.restore()


def test_registry_rejects_unknown_names_and_bad_parameters():
    with pytest.raises(UserError, match="unknown objective 'nope'"):
        make_objective("nope")
    with pytest.raises(UserError, match="weighting"):
        make_objective("layer_recon", weighting="magic")
    with pytest.raises(UserError, match="form"):
        make_objective("model_recon", form="l2")
    with pytest.raises(UserError, match="topk"):
        make_objective("kl", topk=0)
    with pytest.raises(UserError, match="windows"):
        make_objective("ppl", windows=-1)
    with pytest.raises(UserError, match="objective 'kl'"):
        make_objective("kl", temperature=2.0)
    with pytest.raises(UserError):
        make_objective("sparsity", target=0.5)


def test_layer_recon_needs_gram_matrices():
    model = tiny_model("llama")
    ids = _ids(model)
    stats = dense_statistics(model, ids, with_gram=False, use_cache=False, progress=False).stats
    ctx = CandidateContext(model, stats=stats, probe_ids=ids)
    with pytest.raises(UserError, match="Gram"):
        make_objective("layer_recon", weighting="uniform").prepare(ctx)


def test_layer_recon_sketch_is_close_to_the_exact_error(ctx):
    ctx.apply(plan_for_method("wanda", sparsity=0.5))
    exact = make_objective("layer_recon", weighting="energy")
    exact.prepare(ctx)
    rows = exact.row_errors(ctx)
    sketched = make_objective("layer_recon", weighting="energy", sketch=32)
    sketched.prepare(ctx)
    approx = sketched.row_errors(ctx)
    total, total_approx = sum(float(r.sum()) for r in rows.values()), sum(float(r.sum()) for r in approx.values())
    assert total_approx == pytest.approx(total, rel=0.15)
    full = make_objective("layer_recon", weighting="energy", sketch=10_000)  # r >= in: exact
    assert full(ctx, None) == pytest.approx(exact(ctx, None), rel=1e-6)
    ctx.restore()


def test_updated_plans_are_applied_once_and_copied_back_after(monkeypatch):
    """A plan with a weight update (tens of seconds on a real model) is pruned once per context: applying
    it again (the next selection stage, the final comparison) copies the kept weights back, equal to
    a fresh prune; the bound keeps no more entries than fit."""
    import automl_prune.candidate_context as C

    ctx = _context(sharpen=False)
    calls = []
    real = C.prune_model
    monkeypatch.setattr(C, "prune_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    admm = plan_for_method("admm", sparsity=0.5)
    first = ctx.apply(admm)
    weights = {k: m.weight.detach().clone() for k, m in ctx.modules.items()}
    ctx.apply(plan_for_method("wanda", sparsity=0.5))  # mask-only plans are not kept (cheap to redo)
    ctx.restore()
    ctx.apply(plan_for_method("wanda", sparsity=0.5))
    assert ctx.apply(plan_for_method("wanda", sparsity=0.5)) is not None and len(calls) == 3  # already held: no work
    again = ctx.apply(admm)
    assert len(calls) == 3 and again is first
    assert all(torch.equal(m.weight, weights[k]) for k, m in ctx.modules.items())
    ctx.restore()
    monkeypatch.setattr(C, "UPDATED_CACHE_BYTES", ctx._entry_bytes)  # room for one entry: the older one goes
    ctx.apply(plan_for_method("admm", sparsity=0.6))
    ctx.apply(admm)
    assert len(calls) == 5
    ctx.restore()


def test_objectives_of_one_candidate_share_the_gram_products(monkeypatch):
    """Several Gram-based objectives on one candidate multiply dW by G once; new weights (another
    apply, a restore) compute it again, to the same values."""
    from objectives.layer_recon import LayerRecon

    ctx = _context(sharpen=False)
    objs = [make_objective("layer_recon", weighting=w) for w in ("uniform", "energy", "fisher")]
    for o in objs:
        o.prepare(ctx)
    calls = []
    real = LayerRecon._row_errors
    monkeypatch.setattr(LayerRecon, "_row_errors", staticmethod(lambda *a, **k: calls.append(1) or real(*a, **k)))
    plan = plan_for_method("wanda", sparsity=0.5)
    result = ctx.apply(plan)
    values = [o(ctx, result) for o in objs]
    assert len(calls) == 1 and len(set(values)) == 3
    ctx.restore()
    result = ctx.apply(plan)
    assert [o(ctx, result) for o in objs] == values and len(calls) == 2
    ctx.apply(plan_for_method("wanda", sparsity=0.6))
    assert objs[0](ctx, result) > values[0] and len(calls) == 3
    ctx.restore()


def test_layer_recon_computes_only_the_groups_an_allocation_move_changed():
    """Per-block allocations scored in a row: a block whose masks an earlier candidate held is read
    back, not recomputed, and every value equals a computation without that memory (mask-only and
    SparseGPT-updated plans)."""
    from objectives.layer_recon import GroupErrors

    ctx = _context(sharpen=False)
    obj = make_objective("layer_recon", weighting="fisher", fisher_windows=1)
    obj.prepare(ctx)
    n = len(ctx.blocks)
    groups_per_block = len(obj._groups(ctx)) // n
    for method in ("wanda", "sparsegpt"):
        ctx.memo["layer_recon_known"] = GroupErrors()
        base = plan_for_method(method, sparsity=0.5)
        allocations = [[0.5] * n, [0.6] + [0.5] * (n - 1), [0.6, 0.4] + [0.5] * (n - 2), [0.5] * n]
        values, hits = [], []
        for alloc in allocations:
            known = ctx.memo["layer_recon_known"]
            before = known.hits
            result = ctx.apply(base.model_copy(update={"sparsity": alloc}))
            values.append(obj(ctx, result))
            hits.append(known.hits - before)
            ctx.memo["layer_recon_known"], saved = GroupErrors(budget_bytes=0), known  # no memory
            ctx.candidate_memo.clear()
            assert obj(ctx, result) == values[-1], (method, alloc)
            ctx.memo["layer_recon_known"] = saved
            ctx.restore()
        # first: nothing seen; then blocks 1.. as before; then all but block 1 (block 0 as in the second);
        # last: the first allocation again
        assert hits == [0, (n - 1) * groups_per_block, (n - 1) * groups_per_block, n * groups_per_block], (method, hits)
        assert values[0] == values[-1] and len(set(values[:3])) == 3


def test_layer_recon_does_not_mix_up_groups_with_equal_masks():
    """Two blocks with the same weights prune to the same masks; their groups still differ (other
    inputs, other Gram matrices), and the remembered errors keep them apart."""
    from objectives.layer_recon import GroupErrors

    model = tiny_model("llama", seed=0)
    with torch.no_grad():
        model.model.layers[1].load_state_dict(model.model.layers[0].state_dict())  # block 1 = block 0
    ids = _ids(model)
    stats = dense_statistics(model, ids, with_gram=True, use_cache=False, progress=False).stats
    ctx = CandidateContext(model, stats=stats, probe_ids=ids)
    obj = make_objective("layer_recon", weighting="energy")
    obj.prepare(ctx)
    result = ctx.apply(plan_for_method("magnitude", sparsity=0.5))
    assert ctx.layer_digests()["0.self_attn.q_proj"] == ctx.layer_digests()["1.self_attn.q_proj"]
    remembered = obj(ctx, result)
    ctx.candidate_memo.clear()
    ctx.memo["layer_recon_known"] = GroupErrors(budget_bytes=0)
    assert remembered == obj(ctx, result)
    ctx.restore()
