"""Candidates of a block-streamed context (``offload: cpu | disk``): one pass over the decoder blocks.

A block-streamed context never holds the whole pruned model. Applying a plan is one pass: each
block is brought to the device from the store (dense), its layers are pruned in place as
``prune_model`` prunes them (the same scores, masks and updates, from the same dense statistics),
and while it is there the pass computes what the objectives asked for (``ctx.stream_requests``,
registered when they are prepared): the per-layer zero masks, the per-row reconstruction errors
(layer_recon), the probe windows' hidden states through the pruned block (kl, calib_ppl,
model_recon; their per-block errors through a callback). Then the block is released: its pruned
weights are gone, the store still holds the dense ones, and nothing needs restoring. A request
that was not registered costs one more pass (the masks then come from the score cache).

The same pass with no plan gives the dense references (the probe's dense outputs, the dense
energies); ``stream_fisher`` gives the diagonal Fisher of the layer outputs by backpropagating
block by block (each block's inputs kept, each block recomputed with gradients once).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .calibration.blocks import BlockRunner
from .errors import UserError
from .evaluation.perplexity import heads_nll, perplexity
from .evaluation.streamed import put_in, tail
from .fisher import next_token_loss, output_grad_hooks
from .models.adapters import prunable_linears
from .models.offload import passthrough
from .pruning.apply import PruneResult, prune_block_layers
from .pruning.plan import PruningPlan


@dataclass
class ProbeRequest:
    """Windows to run through the (pruned) blocks: ``on_block(block, batch_start, hidden)`` sees every
    block's output for every batch, in order (and may raise to end the pass)."""

    key: tuple
    ids: torch.Tensor
    batch_size: int
    on_block: Callable[[int, int, torch.Tensor], None] | None = None


@dataclass
class PassOutput:
    result: PruneResult | None
    bits: dict[str, bytes] = field(default_factory=dict)  # per layer: packed zero mask (candidates)
    rows: dict[str, torch.Tensor] | None = None  # per layer: per-row errors (dW G dW^T)_ii, or (W G W^T)_ii dense
    finals: dict[tuple, torch.Tensor] = field(default_factory=dict)  # per request: LM-head inputs (n * L, d)


def _group_rows(block_stats, linears: dict, names: list[str], mats: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Per layer of one block, the per-row errors of ``mats`` (dW or W) under the layers' Gram
    matrices, the layers that share an input stacked into one product (as layer_recon does)."""
    by_input: dict[int, list[str]] = {}
    for name in names:
        st = block_stats.get(name)
        if st is None or st.gram is None:
            raise UserError(f"objective 'layer_recon' needs dense statistics with Gram matrices; layer {name} has none")
        by_input.setdefault(id(st), []).append(name)
    out: dict[str, torch.Tensor] = {}
    for group in by_input.values():
        op = block_stats[group[0]].gram.to(device, torch.float32)
        d = mats[group[0]] if len(group) == 1 else torch.cat([mats[n] for n in group])
        d = d.to(op.device, torch.float32)
        rows = ((d @ op) * d).sum(1)
        for n, r in zip(group, rows.split([linears[n].out_features for n in group])):
            out[n] = r
    return out


@torch.no_grad()
def stream_pass(ctx, plan: PruningPlan | None, *, rows: bool = False, probes: Sequence[ProbeRequest] = ()) -> PassOutput:
    """One pass over the blocks of ``ctx`` (a context with a block store): pruned with ``plan``, or
    dense when ``plan`` is None (``rows`` then gives the dense energies (W G W^T)_ii)."""
    n = len(ctx.blocks)
    out = PassOutput(PruneResult(plan) if plan is not None else None, rows={} if rows else None)
    runners = [BlockRunner(ctx.model, ctx.blocks, r.ids, batch_size=r.batch_size, device=ctx.device, store=ctx.store)
               for r in probes]
    for i in range(n):
        block_stats = ctx.stats[i]
        with ctx.store.loaded(i, writable=plan is not None) as block:
            linears = prunable_linears(block)
            dense = {name: lin.weight.detach().clone() for name, lin in linears.items()} if rows and plan is not None else None
            if plan is not None:
                prune_block_layers(i, block, block_stats, plan, n, out.result, scores=ctx.scores)
                for name, lin in linears.items():
                    out.bits[f"{i}.{name}"] = np.packbits((lin.weight == 0).cpu().numpy()).tobytes()
            if rows:
                mats = {name: (dense[name] - lin.weight.detach()) if dense is not None else lin.weight.detach()
                        for name, lin in linears.items()}
                for name, r in _group_rows(block_stats, linears, list(linears), mats, ctx.device).items():
                    out.rows[f"{i}.{name}"] = r
                del dense, mats
            for req, runner in zip(probes, runners):
                runner.run(i)
                if req.on_block is not None:
                    for s, h in zip(range(0, req.ids.shape[0], req.batch_size), runner.hidden):
                        req.on_block(i, s, h)
    for req, runner in zip(probes, runners):
        out.finals[req.key] = torch.cat([h.float() for h in tail(ctx.model, ctx.blocks, req.ids, runner.hidden,
                                                                 req.batch_size, ctx.device)]).reshape(-1, runner.hidden[0].shape[-1])
    if out.result is not None:
        out.result.info.update(mode="one-shot", offload=ctx.store.mode)
    return out


def stream_fisher(ctx, ids: torch.Tensor, *, labels: str = "data", seed: int = 0) -> dict[str, torch.Tensor]:
    """``output_fisher`` (objectives/layer_recon.py) of a block-streamed context: the dense model's
    mean squared gradient of the summed next-token loss with respect to every prunable layer's
    outputs, one window at a time; the blocks' inputs are kept from a forward pass, then the
    gradient goes back block by block (each block recomputed with gradients, its layers hooked)."""
    model, blocks = ctx.model, ctx.blocks
    runner = BlockRunner(model, blocks, ids, batch_size=1, device=ctx.device, store=ctx.store)
    inputs: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for i in range(len(blocks)):
            inputs.append(list(runner.hidden))
            with runner.block(i):
                runner.run(i)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    grads: list[torch.Tensor] = []
    count = 0
    with passthrough(blocks):  # the loss of each window and its gradient at the last block's output
        for w, h in enumerate(runner.hidden):
            window = ids[w : w + 1].to(ctx.device)
            x = h.detach().to(ctx.device).requires_grad_(True)
            handle = blocks[0].register_forward_pre_hook(put_in(x), with_kwargs=True)
            try:
                with torch.enable_grad():
                    next_token_loss(model(input_ids=window, use_cache=False).logits, window, labels, gen).backward()
            finally:
                handle.remove()
            grads.append(x.grad.detach())
            count += window.numel()
    acc: dict[str, torch.Tensor] = {}
    for i in reversed(range(len(blocks))):
        with ctx.store.loaded(i, writable=False) as block:
            linears = prunable_linears(block)
            sums = {name: torch.zeros(lin.out_features, dtype=torch.float64, device=ctx.device) for name, lin in linears.items()}
            handles = output_grad_hooks(linears, sums)
            try:
                for w in range(len(grads)):
                    x = inputs[i][w].detach().to(ctx.device).requires_grad_(True)
                    with torch.enable_grad():
                        runner.calls[i](block, x).backward(grads[w])
                    grads[w] = x.grad.detach()
            finally:
                for h in handles:
                    h.remove()
            for name, v in sums.items():
                acc[f"{i}.{name}"] = v
        inputs[i] = []
    return {k: (acc[k] / max(count, 1)).float() for k in ctx.modules}


@torch.no_grad()
def candidate_perplexity(ctx, ids: torch.Tensor, *, batch_size: int = 1) -> dict:
    """Perplexity of the candidate the context holds on windows ``ids`` (evaluation/perplexity.py's
    figures): the model's forward in memory, a pass over the blocks when they are offloaded."""
    if not ctx.streamed:
        return perplexity(ctx.model, ids, batch_size=batch_size, device=ctx.device, progress=False)
    start = time.perf_counter()
    key = ("perplexity", tuple(ids.shape))
    result = ctx.applied_result
    final = stream_pass(ctx, result.plan if result is not None else None,
                        probes=[ProbeRequest(key, ids, batch_size)]).finals[key]
    n, length = ids.shape
    total, count = heads_nll(ctx.model, list(final.reshape(n, length, -1).split(batch_size)), ids, batch_size)
    mean = total / max(count, 1)
    return dict(ppl=math.exp(mean) if mean < 700 else float("inf"), nll=mean, n_windows=int(n), seqlen=int(length),
                n_tokens=count, seconds=round(time.perf_counter() - start, 3))
