"""KL divergence of next-token distributions, dense vs pruned, on the same windows.

Only one model lives in memory: the dense values of the pruned matrices are kept aside and
swapped in and out (a pointer swap, no copy) around each window.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from ..models.adapters import model_linears
from ..progress import progress_bar
from .streamed import streamed_head_inputs, streamed_kl


@contextlib.contextmanager
def swapped_weights(modules: dict[str, nn.Linear], weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Temporarily give each module in ``modules`` the weight tensor of the same name."""
    saved = {name: modules[name].weight.data for name in weights}
    try:
        for name, w in weights.items():
            modules[name].weight.data = w
        yield
    finally:
        for name, w in saved.items():
            modules[name].weight.data = w


@torch.no_grad()
def kl_to_dense(model: nn.Module, modules: dict[str, nn.Linear], dense: dict[str, torch.Tensor], input_ids: torch.Tensor,
                *, device: torch.device | str = "cpu", progress: bool = True) -> dict:
    """Mean per-token KL(dense || pruned) over the windows; ``dense`` maps module names to dense weights."""
    start = time.perf_counter()
    total, count = 0.0, 0
    for i in progress_bar(range(input_ids.shape[0]), desc="kl", unit="window", enabled=progress, leave=False):
        ids = input_ids[i : i + 1].to(device)
        logp = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        with swapped_weights(modules, dense):
            logq = F.log_softmax(model(input_ids=ids, use_cache=False).logits.float(), dim=-1)
        total += float(F.kl_div(logp, logq, log_target=True, reduction="sum"))
        count += ids.numel()
    return dict(kl=total / max(count, 1), n_tokens=count, seconds=round(time.perf_counter() - start, 3))


class DenseReference:
    """What KL(dense || pruned) needs of the dense model, taken before it is pruned: the dense weights
    of its prunable layers, or, offloaded (``store``: the blocks stream and no dense copy is kept),
    the LM-head inputs of every text's windows. :meth:`kl` then measures the pruned model."""

    def __init__(self, model: nn.Module, windows: dict[str, torch.Tensor], *, device: torch.device | str = "cpu",
                 store=None):
        self.model, self.windows, self.device, self.store = model, windows, device, store
        if store is None:
            self.modules = model_linears(model)
            self.weights = {name: m.weight.data.clone() for name, m in self.modules.items()}
        else:  # on the host until the pruned ones are formed
            self.heads = {s: [h.cpu() for h in streamed_head_inputs(model, store, ids, device=device, desc=f"dense {s}")]
                          for s, ids in windows.items()}

    def kl(self) -> dict[str, dict]:
        """Per text: mean per-token KL(dense || pruned) of the model as it is now."""
        if self.store is None:
            return {s: kl_to_dense(self.model, self.modules, self.weights, ids, device=self.device)
                    for s, ids in self.windows.items()}
        return {s: streamed_kl(self.model, self.heads[s], streamed_head_inputs(self.model, self.store, ids,
                                                                               device=self.device, desc=f"pruned {s}"))
                for s, ids in self.windows.items()}
