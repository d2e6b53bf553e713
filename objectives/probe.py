"""One forward pass over the probe windows, shared by the forward-based objectives.

The dense reference (the input of the LM head for every probe token, and optionally every
decoder block's output) is computed once per context and kept in ``ctx.memo``; the dense weights
are swapped in for it (``ctx.dense``), so it does not matter what the model holds at the time.

For a candidate, one forward of the pruned model over the probe windows gives the LM-head inputs
and, when the dense block outputs are kept, per-block error sums; the run is cached in
``ctx.memo`` against the ``PruneResult`` object, so ``kl``, ``calib_ppl`` and ``model_recon``
scoring the same candidate share one forward. The forward stops at the LM head (a pre-hook
captures its input): full-vocabulary logits are only ever formed for ``CHUNK`` tokens at a time.

Forward hooks on the blocks make the run block-sequential in effect: after block ``l`` the
accumulated partial error is handed to a reporter, and a ``TrialStopped`` raised from the hook
ends the forward early.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from automl_prune.candidate_context import CandidateContext
from automl_prune.candidate_stream import ProbeRequest, stream_pass
from automl_prune.evaluation.head import CHUNK, forward_to_head, head_logits, logit_chunks  # noqa: F401 (used by objectives)
from automl_prune.evaluation.head import softcap as _softcap  # noqa: F401
from automl_prune.evaluation.kl import swapped_weights

# ----- windows and the model's forward ----------------------------------------------------------
def probe_windows(ctx: CandidateContext, windows: int | None, seqlen: int | None) -> torch.Tensor:
    """The first ``windows`` probe windows, each cut to its first ``seqlen`` tokens."""
    ids = ctx.probe_ids
    if ids is None or ids.dim() != 2 or ids.shape[0] == 0:
        raise ValueError("the search context has no probe windows (probe_ids of shape (n, seqlen))")
    if windows is not None:
        ids = ids[:windows]
    if seqlen is not None:
        if seqlen < 2:
            raise ValueError("seqlen must be at least 2")
        ids = ids[:, :seqlen]
    return ids


# ----- the dense reference and the per-candidate run ------------------------------------------------
@dataclass
class ProbeReference:
    ids: torch.Tensor  # (n, L)
    final: torch.Tensor  # (n * L, d) dense LM-head inputs, float32
    blocks: list[torch.Tensor] | None  # dense block outputs (n, L, d) per block, float32, or None


@dataclass
class ProbeRun:
    """The pruned model's LM-head inputs and per-block error sums over all probe tokens."""

    final: torch.Tensor  # (n * L, d) float32
    n_tokens: int
    # per block (length n_blocks; zeros when the dense block outputs were not kept):
    sq: torch.Tensor | None = None  # sum_t ||h_p - h_d||^2
    ref: torch.Tensor | None = None  # sum_t ||h_d||^2
    rms: torch.Tensor | None = None  # sum_t ||u_p - u_d||^2 / d, u = h / rms(h) per token
    cos: torch.Tensor | None = None  # sum_t (1 - cos(h_p, h_d))

    def block_terms(self, form: str) -> torch.Tensor:
        """Per-block error term of a hidden-state form (hidden_rel, hidden_rms, hidden_cos)."""
        if self.sq is None:
            raise RuntimeError("this probe run holds no per-block errors")
        if form == "hidden_rel":
            return self.sq / self.ref.clamp_min(1e-30)
        if form == "hidden_rms":
            return self.rms / self.n_tokens
        if form == "hidden_cos":
            return self.cos / self.n_tokens
        raise ValueError(f"unknown hidden-state form {form!r}")


def _key(windows: int | None, seqlen: int | None) -> tuple:
    return (windows, seqlen)


def reference(ctx: CandidateContext, windows: int | None, seqlen: int | None, *, blocks: bool = False,
              batch_size: int | None = None) -> ProbeReference:
    """The dense reference on the selected probe windows (computed once, memoised)."""
    store = ctx.memo.setdefault("probe_reference", {})
    key = _key(windows, seqlen)
    ref = store.get(key)
    if ref is not None and (ref.blocks is not None or not blocks):
        return ref
    ids = probe_windows(ctx, windows, seqlen)
    bs = batch_size or ids.shape[0]
    finals: list[torch.Tensor] = []
    outs: list[list[torch.Tensor]] = [[] for _ in ctx.blocks] if blocks else []

    def keep(i: int, h: torch.Tensor) -> None:
        outs[i].append(h.float().clone())

    if ctx.streamed:  # one dense pass over the offloaded blocks; candidates run these windows in their pass
        req = ProbeRequest(key, ids, bs, on_block=(lambda i, _s, h: keep(i, h)) if blocks else None)
        ref = ProbeReference(ids, stream_pass(ctx, None, probes=[req]).finals[key],
                             [torch.cat(o) for o in outs] if blocks else None)
        store[key] = ref
        ctx.memo.setdefault("stream_probes", {})[key] = lambda c, key=key, bs=bs: _stream_request(c, c.memo["probe_reference"][key], key, bs)
        return ref

    with torch.no_grad(), swapped_weights(ctx.modules, ctx.dense):
        for s in range(0, ids.shape[0], bs):
            batch = ids[s : s + bs].to(ctx.device)
            finals.append(forward_to_head(ctx.model, ctx.blocks, batch, keep if blocks else None).float())
    final = torch.cat(finals).reshape(-1, finals[0].shape[-1])
    ref = ProbeReference(ids, final, [torch.cat(o) for o in outs] if blocks else None)
    store[key] = ref
    return ref


def _rms_normed(h: torch.Tensor) -> torch.Tensor:
    return h * torch.rsqrt(h.square().mean(-1, keepdim=True).clamp_min(1e-30))


def run(ctx: CandidateContext, result: object, windows: int | None, seqlen: int | None, *,
        report: Callable[[int, "ProbeRun"], None] | None = None, need_blocks: bool = False,
        batch_size: int | None = None) -> ProbeRun:
    """One forward of the pruned model (as it is now) over the probe windows, cached per candidate.

    ``report(block, partial_run)``, if given, is called after every block (during the last batch,
    when all earlier batches have gone through every block) with the per-block sums so far; it may
    raise to stop. A cached run replays the calls.
    """
    key = _key(windows, seqlen)
    cached = ctx.memo.get("probe_runs", {}).get(key)
    if result is not None and cached is not None and cached[0] is result and (cached[1].sq is not None or not need_blocks):
        probe = cached[1]
        if report is not None:
            for i in range(len(ctx.blocks)):
                report(i, probe)
        return probe
    ref = reference(ctx, windows, seqlen, blocks=need_blocks, batch_size=batch_size)
    ids = ref.ids
    with_blocks = ref.blocks is not None
    bs = batch_size or ids.shape[0]
    if report is not None and not with_blocks:
        raise RuntimeError("early-stopping reports need the dense block outputs (need_blocks=True)")
    if ctx.streamed:  # a pass of its own (these windows were not in the candidate's pass)
        req, finish = _stream_request(ctx, ref, key, bs, report)
        plan = result.plan if result is not None else ctx.applied_result.plan
        return finish(result, stream_pass(ctx, plan, probes=[req]).finals[key])
    probe = _empty_run(ctx, ids, with_blocks)
    finals: list[torch.Tensor] = []
    for s in range(0, ids.shape[0], bs):
        last = s + bs >= ids.shape[0]

        def on_block(i: int, h: torch.Tensor, s: int = s, last: bool = last) -> None:
            _accumulate(probe, i, h, ref.blocks[i][s : s + h.shape[0]])
            if report is not None and last:
                report(i, probe)

        batch = ids[s : s + bs].to(ctx.device)
        finals.append(forward_to_head(ctx.model, ctx.blocks, batch, on_block if with_blocks else None).float())
    probe.final = torch.cat(finals).reshape(-1, finals[0].shape[-1])
    if result is not None:
        ctx.memo.setdefault("probe_runs", {})[key] = (result, probe)
    return probe


def _empty_run(ctx: CandidateContext, ids: torch.Tensor, with_blocks: bool) -> ProbeRun:
    probe = ProbeRun(final=torch.empty(0), n_tokens=int(ids.numel()))
    if with_blocks:
        probe.sq, probe.ref, probe.rms, probe.cos = (torch.zeros(len(ctx.blocks), dtype=torch.float64) for _ in range(4))
    return probe


def _accumulate(probe: ProbeRun, i: int, h: torch.Tensor, d: torch.Tensor) -> None:
    """Add one batch's block-``i`` errors (pruned output ``h``, dense output ``d``) to the run."""
    hp = h.float()
    probe.sq[i] += float((hp - d).square().sum())
    probe.ref[i] += float(d.square().sum())
    probe.rms[i] += float((_rms_normed(hp) - _rms_normed(d)).square().mean(-1).sum())
    probe.cos[i] += float((1 - torch.nn.functional.cosine_similarity(hp, d, dim=-1)).sum())


def _stream_request(ctx: CandidateContext, ref: ProbeReference, key: tuple, bs: int,
                    report: Callable[[int, ProbeRun], None] | None = None):
    """(request, finish) of a probe run in a streamed candidate's pass: the request accumulates the
    per-block errors batch by batch as the in-memory forward does; ``finish(result, final)`` completes
    the run and caches it for the candidate."""
    with_blocks = ref.blocks is not None
    probe = _empty_run(ctx, ref.ids, with_blocks)
    n = ref.ids.shape[0]

    def on_block(i: int, s: int, h: torch.Tensor) -> None:
        _accumulate(probe, i, h, ref.blocks[i][s : s + h.shape[0]])
        if report is not None and s + bs >= n:
            report(i, probe)

    def finish(result, final: torch.Tensor) -> ProbeRun:
        probe.final = final
        if result is not None:
            ctx.memo.setdefault("probe_runs", {})[key] = (result, probe)
        return probe

    return ProbeRequest(key, ref.ids, bs, on_block if with_blocks else None), finish
