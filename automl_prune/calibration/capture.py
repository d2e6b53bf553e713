"""Capture the input statistics of every prunable linear layer, block by block.

Two modes, as in the references:

* ``one-shot``: statistics of the dense model; each block's outputs (dense) feed the next block.
  One forward pass per block.
* ``sequential``: each block's statistics are taken on inputs coming from the already pruned
  earlier blocks; a callback prunes the block, then the block is run again so that its *pruned*
  outputs feed the next block (Wanda / SparseGPT ``prune_*`` loops).

Layers that read the very same input tensor (q/k/v, gate/up) share one ``LinearStats`` object,
so the statistics (and the Gram matrix, the costly part) are accumulated once per distinct input.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from ..progress import progress_bar

from .blocks import BlockRunner
from .stats import LinearStats

BlockStats = dict[str, LinearStats]
OnBlock = Callable[[int, nn.Module, BlockStats], None]


class _StatsHooks:
    """Forward pre-hooks on the linear layers of one block that feed ``LinearStats``."""

    def __init__(self, linears: dict[str, nn.Linear], with_gram: bool, device: torch.device):
        self.stats: BlockStats = {}
        self._leader: dict[str, str] = {}  # layer -> layer whose stats it shares
        self._seen: dict[tuple, tuple[torch.Tensor, str]] = {}
        self._with_gram = with_gram
        self._device = device
        self._handles = [lin.register_forward_pre_hook(self._hook(name)) for name, lin in linears.items()]

    def _hook(self, name: str) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            x = args[0]
            leader = self._leader.get(name)
            if leader is None:  # first batch: discover which layers share an input tensor
                key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
                if key in self._seen:
                    leader = self._seen[key][1]
                    self.stats[name] = self.stats[leader]
                else:
                    leader = name
                    self._seen[key] = (x, name)  # holding x keeps its memory from being reused
                    self.stats[name] = LinearStats.empty(x.shape[-1], with_gram=self._with_gram, device=self._device)
                self._leader[name] = leader
            if leader == name:
                self.stats[name].update(x, n_seqs=x.shape[0] if x.dim() == 3 else 1)

        return hook

    def end_batch(self) -> None:
        self._seen.clear()

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


@torch.no_grad()
def _collect(runner: BlockRunner, index: int, linears: dict[str, nn.Linear], with_gram: bool, keep_outputs: bool) -> BlockStats:
    block = runner.blocks[index]
    hooks = _StatsHooks(linears, with_gram, runner.device)
    try:
        outputs = []
        for h in runner.hidden:
            outputs.append(runner.calls[index](block, h.to(runner.device)).to(runner.home))
            hooks.end_batch()
    finally:
        hooks.remove()
    if keep_outputs:
        runner.hidden = outputs
    return hooks.stats


@torch.no_grad()
def capture_statistics(
    runner: BlockRunner,
    linears_of: Callable[[nn.Module], dict[str, nn.Linear]],
    *,
    mode: str = "one-shot",
    with_gram: bool = False,
    on_block: OnBlock | None = None,
    blocks: Iterable[int] | None = None,
    offload: torch.device | str = "cpu",
    progress: bool = True,
    keep: Callable[[int, BlockStats], BlockStats | None] | None = None,
) -> list[BlockStats]:
    """Statistics of every block's prunable linear layers (names relative to the block).

    ``on_block(i, block, stats)`` is called after block ``i``'s statistics are complete; in
    ``sequential`` mode it is expected to prune the block, which is then run again so that the
    next block sees pruned outputs. Statistics are moved to ``offload`` after each block; ``keep(i,
    stats)``, if given, receives them then and returns what the result holds for the block (None
    once they are written to disk: a block-streamed run holds one block's statistics at a time).
    """
    if mode not in ("one-shot", "sequential"):
        raise ValueError(f"mode must be 'one-shot' or 'sequential', not {mode!r}")
    indices = list(range(len(runner.blocks))) if blocks is None else list(blocks)
    result: list[BlockStats] = []
    bar = progress_bar(indices, desc=f"calibration ({mode})", unit="block", enabled=progress, leave=False)
    for i in bar:
        # offloaded blocks: on the device for the block's whole turn, kept as on_block left them
        with runner.block(i, write_back=on_block is not None) as block:
            stats = _collect(runner, i, linears_of(block), with_gram, keep_outputs=(mode == "one-shot"))
            if on_block is not None:
                on_block(i, block, stats)
            if mode == "sequential":
                runner.run(i, keep_outputs=True)
        stats = _dedup_to(stats, offload)
        if keep is not None:
            stats = keep(i, stats)
        result.append(stats)
    return result


def _dedup_to(stats: BlockStats, device: torch.device | str) -> BlockStats:
    """Move stats to ``device`` keeping shared objects shared."""
    moved: dict[int, LinearStats] = {}
    out: BlockStats = {}
    for name, s in stats.items():
        if id(s) not in moved:
            moved[id(s)] = s.to(device)
        out[name] = moved[id(s)]
    return out
