"""The pieces of a diagonal Fisher of the prunable layers' outputs shared by the in-memory pass
(objectives/layer_recon.py ``output_fisher``) and the block-streamed one (candidate_stream.py
``stream_fisher``): the summed next-token loss of one window, and hooks that add every layer's
squared output gradients per channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def next_token_loss(logits: torch.Tensor, window: torch.Tensor, labels: str, gen: torch.Generator) -> torch.Tensor:
    """Summed next-token cross entropy of one window's logits (1, L, V): on the real next tokens
    (``labels: data``) or on tokens sampled from the logits themselves (``model``, with ``gen``)."""
    logits = logits[:, :-1].float()
    logits = logits.reshape(-1, logits.shape[-1])
    if labels == "data":
        target = window[:, 1:].reshape(-1)
    else:  # sampled from the dense model
        probs = torch.softmax(logits.detach(), -1).cpu()
        target = torch.multinomial(probs, 1, generator=gen).reshape(-1).to(logits.device)
    return F.cross_entropy(logits, target, reduction="sum")


def output_grad_hooks(layers: dict[str, nn.Module], sums: dict[str, torch.Tensor]) -> list:
    """Forward hooks on ``layers`` that make every backward pass add the squared gradient of each
    layer's output, summed over tokens per output channel (float64), into ``sums[name]``; returns the
    handles (remove them after use)."""
    def hook(name: str):
        def grad_hook(g: torch.Tensor) -> None:
            sums[name].add_(g.detach().float().reshape(-1, g.shape[-1]).square().sum(0, dtype=torch.float64))

        def fwd(_m, _inp, out):
            out.register_hook(grad_hook)
        return fwd

    return [m.register_forward_hook(hook(name)) for name, m in layers.items()]
