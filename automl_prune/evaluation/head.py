"""The LM head's inputs and the logits formed from them, chunk by chunk (full-vocabulary logits
are only ever formed for ``CHUNK`` tokens at a time)."""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

CHUNK = 512  # tokens per chunk when full-vocabulary logits are formed


class _Stop(Exception):
    """Raised in the LM-head pre-hook: the logits are formed chunk by chunk afterwards."""


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


def softcap(model: nn.Module) -> float | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(text, "final_logit_softcapping", None)
    return float(cap) if cap else None


@torch.no_grad()
def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Float32 logits of LM-head inputs ``hidden`` (..., d), as the model's forward forms them
    (including Gemma's final logit soft-capping). ``hidden`` is brought to the head's dtype and
    device (the runs keep float32 copies of the head's inputs)."""
    head = model.get_output_embeddings()
    logits = head(hidden.to(head.weight.device, head.weight.dtype)).float()
    cap = softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def logit_chunks(model: nn.Module, hidden: torch.Tensor, chunk: int = CHUNK) -> Iterator[tuple[slice, torch.Tensor]]:
    """(token slice, float32 logits) for ``hidden`` (T, d), ``chunk`` tokens at a time."""
    for s in range(0, hidden.shape[0], chunk):
        sl = slice(s, min(s + chunk, hidden.shape[0]))
        yield sl, head_logits(model, hidden[sl])
