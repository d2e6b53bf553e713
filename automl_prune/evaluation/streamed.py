"""Forward passes of a block-streamed model (``offload: cpu | disk``): block by block over all
windows, the hidden states of every window kept between blocks, each block on the device once;
then the final norm and the LM head alone (the blocks passed through, the last block's outputs put
in as the first block's inputs). The same head inputs as the model's own forward."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration.blocks import BlockRunner
from ..models.offload import passthrough
from ..progress import progress_bar
from .head import CHUNK, forward_to_head, head_logits


@torch.no_grad()
def streamed_head_inputs(model: nn.Module, store, input_ids: torch.Tensor, *, batch_size: int = 1,
                         device: torch.device | str = "cpu", progress: bool = True, desc: str = "forward") -> list[torch.Tensor]:
    """The LM head's inputs, one (b, L, d) tensor per batch of ``batch_size`` windows."""
    blocks = store.blocks
    runner = BlockRunner(model, blocks, input_ids, batch_size=batch_size, device=device, store=store)
    for i in progress_bar(range(len(blocks)), desc=desc, unit="block", enabled=progress, leave=False):
        with runner.block(i):
            runner.run(i)
    return tail(model, blocks, input_ids, runner.hidden, batch_size, device)


@torch.no_grad()
def tail(model: nn.Module, blocks: list[nn.Module], ids: torch.Tensor, hidden: list[torch.Tensor], batch_size: int,
         device) -> list[torch.Tensor]:
    """The LM head's inputs for the last block's outputs ``hidden`` (one tensor per batch of
    ``batch_size`` windows of ``ids``): the model's own forward with the blocks passed through and
    the outputs put in as the first block's inputs (the final norm and whatever the family does
    after its blocks)."""
    out = []
    with passthrough(blocks):
        for s, h in zip(range(0, ids.shape[0], batch_size), hidden):
            handle = blocks[0].register_forward_pre_hook(put_in(h.to(device)), with_kwargs=True)
            try:
                out.append(forward_to_head(model, blocks, ids[s : s + batch_size].to(device)))
            finally:
                handle.remove()
    return out


def put_in(hidden: torch.Tensor):
    """A forward pre-hook (with kwargs) that replaces a block's hidden-state input by ``hidden``."""
    def hook(_module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}
    return hook


@torch.no_grad()
def streamed_kl(model: nn.Module, dense: list[torch.Tensor], pruned: list[torch.Tensor]) -> dict:
    """Mean per-token KL(dense || pruned) from the two models' LM-head inputs (one tensor per batch),
    full-vocabulary logits formed ``CHUNK`` tokens at a time (as ``kl_to_dense`` on the whole model)."""
    start = time.perf_counter()
    total, count = 0.0, 0
    for hd, hp in zip(dense, pruned):
        hd, hp = hd.reshape(-1, hd.shape[-1]), hp.reshape(-1, hp.shape[-1])
        for s in range(0, hd.shape[0], CHUNK):
            logq = F.log_softmax(head_logits(model, hd[s : s + CHUNK]), dim=-1)
            logp = F.log_softmax(head_logits(model, hp[s : s + CHUNK]), dim=-1)
            total += float(F.kl_div(logp, logq, log_target=True, reduction="sum"))
        count += hd.shape[0]
    return dict(kl=total / max(count, 1), n_tokens=count, seconds=round(time.perf_counter() - start, 3))
