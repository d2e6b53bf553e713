"""Perplexity as the references compute it: exp(mean NLL over all predicted tokens) of fixed windows."""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from ..progress import progress_bar
from .head import head_logits
from .streamed import streamed_head_inputs


@torch.no_grad()
def window_nll(model: nn.Module, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of a batch of windows (b, seqlen) and the number of predicted tokens."""
    return logits_nll(model(input_ids=ids, use_cache=False).logits, ids)


def heads_nll(model: nn.Module, heads: list[torch.Tensor], input_ids: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Summed next-token NLL and prediction count from the LM head's inputs, one (b, L, d) tensor per
    batch of ``batch_size`` windows of ``input_ids`` (a block-streamed forward's)."""
    total, count = 0.0, 0
    for s, h in zip(range(0, input_ids.shape[0], batch_size), heads):
        logits = head_logits(model, h)
        nll, n = logits_nll(logits, input_ids[s : s + batch_size].to(logits.device))
        total, count = total + nll, count + n
    return total, count


def logits_nll(logits: torch.Tensor, ids: torch.Tensor) -> tuple[float, int]:
    """Summed next-token NLL of logits (b, seqlen, vocab) for windows ``ids`` and the number of predictions."""
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1), reduction="sum")
    return float(nll), int(ids[:, 1:].numel())


@torch.no_grad()
def perplexity(model: nn.Module, input_ids: torch.Tensor, *, batch_size: int = 1, device: torch.device | str = "cpu",
               progress: bool = True, desc: str = "perplexity", store=None) -> dict:
    """Perplexity over windows ``input_ids`` (n, seqlen): every window contributes seqlen - 1 predictions.
    ``store``: the blocks are offloaded; the windows go through the model block by block."""
    start = time.perf_counter()
    total, count = 0.0, 0
    if store is not None:
        hidden = streamed_head_inputs(model, store, input_ids, batch_size=batch_size, device=device, progress=progress, desc=desc)
        total, count = heads_nll(model, hidden, input_ids, batch_size)
    else:
        for s in progress_bar(range(0, input_ids.shape[0], batch_size), desc=desc, unit="batch", enabled=progress, leave=False):
            nll, n = window_nll(model, input_ids[s : s + batch_size].to(device))
            total, count = total + nll, count + n
    mean = total / max(count, 1)
    return dict(ppl=math.exp(mean) if mean < 700 else float("inf"), nll=mean, n_windows=int(input_ids.shape[0]),
                seqlen=int(input_ids.shape[1]), n_tokens=count, seconds=round(time.perf_counter() - start, 3))
