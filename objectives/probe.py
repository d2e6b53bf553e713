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
from typing import Callable, Iterator

import torch
from torch import nn

from automl_prune.candidate_context import CandidateContext
from automl_prune.evaluation.kl import swapped_weights

CHUNK = 512  # tokens per chunk when full-vocabulary logits are formed


class _Stop(Exception):
    """Raised in the LM-head pre-hook: the logits are formed chunk by chunk afterwards."""


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


def _block_output(out) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def forward_to_head(model: nn.Module, blocks: list[nn.Module], ids: torch.Tensor,
                    on_block: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run ``model`` on ``ids`` (b, L) up to its LM head; return the head's input (b, L, d).
    ``on_block(i, hidden)`` sees every block's output (and may raise to stop the forward)."""
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (LM head)")
    captured: list[torch.Tensor] = []

    def head_hook(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0].detach())
        raise _Stop

    handles = [head.register_forward_pre_hook(head_hook)]
    if on_block is not None:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_hook(lambda _m, _a, out, i=i: on_block(i, _block_output(out).detach())))
    try:
        model(input_ids=ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if not captured:
        raise RuntimeError("the LM head was not called by the model's forward")
    return captured[0]


def _softcap(model: nn.Module) -> float | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    return float(cap) if cap else None


@torch.no_grad()
def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of LM-head inputs ``hidden`` (..., d), as the model's forward forms them
    (including Gemma's final logit soft-capping)."""
    logits = model.get_output_embeddings()(hidden).float()
    cap = _softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def logit_chunks(model: nn.Module, hidden: torch.Tensor, chunk: int = CHUNK) -> Iterator[tuple[slice, torch.Tensor]]:
    """(token slice, float32 logits) for ``hidden`` (T, d), ``chunk`` tokens at a time."""
    for s in range(0, hidden.shape[0], chunk):
        sl = slice(s, min(s + chunk, hidden.shape[0]))
        yield sl, head_logits(model, hidden[sl])


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
    cached = ctx.memo.get("probe_run")
    if result is not None and cached is not None and cached[0] is result and cached[1] == key and (cached[2].sq is not None or not need_blocks):
        probe = cached[2]
        if report is not None:
            for i in range(len(ctx.blocks)):
                report(i, probe)
        return probe
    ref = reference(ctx, windows, seqlen, blocks=need_blocks, batch_size=batch_size)
    ids = ref.ids
    n_blocks = len(ctx.blocks)
    with_blocks = ref.blocks is not None
    bs = batch_size or ids.shape[0]
    probe = ProbeRun(final=torch.empty(0), n_tokens=int(ids.numel()))
    if with_blocks:
        probe.sq, probe.ref, probe.rms, probe.cos = (torch.zeros(n_blocks, dtype=torch.float64) for _ in range(4))
    finals: list[torch.Tensor] = []
    for s in range(0, ids.shape[0], bs):
        last = s + bs >= ids.shape[0]

        def on_block(i: int, h: torch.Tensor, s: int = s, last: bool = last) -> None:
            d = ref.blocks[i][s : s + h.shape[0]]
            hp = h.float()
            probe.sq[i] += float((hp - d).square().sum())
            probe.ref[i] += float(d.square().sum())
            probe.rms[i] += float((_rms_normed(hp) - _rms_normed(d)).square().mean(-1).sum())
            probe.cos[i] += float((1 - torch.nn.functional.cosine_similarity(hp, d, dim=-1)).sum())
            if report is not None and last:
                report(i, probe)

        batch = ids[s : s + bs].to(ctx.device)
        finals.append(forward_to_head(ctx.model, ctx.blocks, batch, on_block if with_blocks else None).float())
    probe.final = torch.cat(finals).reshape(-1, finals[0].shape[-1])
    if report is not None and not with_blocks:
        raise RuntimeError("early-stopping reports need the dense block outputs (need_blocks=True)")
    if result is not None:
        ctx.memo["probe_run"] = (result, key, probe)
    return probe
