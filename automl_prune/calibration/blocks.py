"""Run a decoder-only model block by block over calibration windows.

Only one block's inputs live in memory at a time (plus the block itself). The keyword arguments
each block receives (attention masks, rotary position embeddings, ...) are recorded once, from
the model's own forward on the first window, for *every* block: families such as Gemma-3 give
sliding-window and global layers different masks and embeddings, so reusing block 0's
arguments everywhere would be wrong. All windows have the same length, and the recorded
arguments have batch size 1, so they broadcast over batches of any size.

With a block store (``offload: cpu | disk``, models/offload.py) the blocks' weights live off the
device: the arguments and the first block's inputs come from the model's forward with the blocks
passed through, and a block is on the device only while ``runner.block(i)`` holds it.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..models.offload import passthrough


class _Stop(Exception):
    """Raised inside a pre-hook to end a forward pass early."""


@dataclass
class BlockCall:
    """How a block is called: whether hidden states come positionally, and the other kwargs."""

    hidden_as_kwarg: bool
    kwargs: dict[str, Any]

    def __call__(self, block: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        out = block(hidden_states=hidden, **self.kwargs) if self.hidden_as_kwarg else block(hidden, **self.kwargs)
        return out[0] if isinstance(out, (tuple, list)) else out


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, list):
        return [_detach(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _hidden_of(args: tuple, kwargs: dict) -> tuple[torch.Tensor, bool]:
    if args:
        return args[0], False
    return kwargs["hidden_states"], True


@torch.no_grad()
def record_block_calls(model: nn.Module, blocks: list[nn.Module], window: torch.Tensor) -> list[BlockCall]:
    """Run the model once on one window (shape (1, seqlen)) and record each block's call."""
    calls: list[BlockCall | None] = [None] * len(blocks)

    def make_hook(i: int) -> Callable:
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            _, as_kw = _hidden_of(args, kwargs)
            rest = {k: v for k, v in kwargs.items() if k != "hidden_states"}
            if len(args) > 1:
                raise RuntimeError(f"block {i} takes {len(args)} positional arguments; only hidden states are supported")
            for cache_kw in ("use_cache", "past_key_values", "past_key_value", "layer_past"):
                rest.pop(cache_kw, None)
            calls[i] = BlockCall(as_kw, _detach(rest))

        return hook

    handles = [b.register_forward_pre_hook(make_hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    try:
        model(input_ids=window, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    missing = [i for i, c in enumerate(calls) if c is None]
    if missing:
        raise RuntimeError(f"decoder blocks {missing} were not called by the model's forward")
    return calls  # type: ignore[return-value]


@torch.no_grad()
def embed_windows(model: nn.Module, first_block: nn.Module, input_ids: torch.Tensor, batch_size: int, device: torch.device,
                  home: torch.device | None = None) -> list[torch.Tensor]:
    """Hidden states entering the first block, one tensor per batch of windows (moved to ``home``
    batch by batch when given)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = _hidden_of(args, kwargs)[0].detach()
        captured.append(hidden if home is None else hidden.to(home))
        raise _Stop

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, input_ids.shape[0], batch_size):
            try:
                model(input_ids=input_ids[start : start + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


@dataclass
class BlockRunner:
    """Iterate over the decoder blocks, handing each block its inputs for every batch."""

    model: nn.Module
    blocks: list[nn.Module]
    input_ids: torch.Tensor  # (n_windows, seqlen)
    batch_size: int = 4
    device: torch.device | str = "cpu"
    store: Any = None  # a BlockStore (models/offload.py) when the blocks are offloaded

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        # where the hidden states wait between blocks: on the host when the blocks are offloaded (a
        # batch goes to the device to run through a block and comes back), else on the device
        self.home = torch.device("cpu") if self.store is not None else self.device
        if self.store is None:
            self.calls = record_block_calls(self.model, self.blocks, self.input_ids[:1].to(self.device))
        else:
            with passthrough(self.blocks):
                self.calls = record_block_calls(self.model, self.blocks, self.input_ids[:1].to(self.device))
        self.hidden = embed_windows(self.model, self.blocks[0], self.input_ids, self.batch_size, self.device, self.home)

    @contextmanager
    def block(self, index: int, *, write_back: bool = False) -> Iterator[nn.Module]:
        """Block ``index`` ready to run for the body (offloaded: brought to the device, written back
        after the body when ``write_back``, then released)."""
        if self.store is None:
            with nullcontext(self.blocks[index]) as block:
                yield block
        else:  # a block that is not written back is only run here: read-only
            with self.store.loaded(index, write_back=write_back, writable=write_back) as block:
                yield block

    @torch.no_grad()
    def run(self, index: int, *, keep_outputs: bool = True) -> None:
        """Run block ``index`` on every batch; if ``keep_outputs`` its outputs become the next inputs.
        The block must be ready (in memory, or held by :meth:`block`)."""
        block, call = self.blocks[index], self.calls[index]
        outputs = [call(block, h.to(self.device)).to(self.home) for h in self.hidden]
        if keep_outputs:
            self.hidden = outputs

    def __iter__(self) -> Iterator[tuple[int, nn.Module]]:
        return iter(enumerate(self.blocks))
