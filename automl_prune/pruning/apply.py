"""Apply a pruning plan to a model: one call, one-shot or sequential."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from ..progress import progress_bar

from ..calibration.blocks import BlockRunner
from ..calibration.capture import BlockStats, capture_statistics
from ..calibration.dense import dense_statistics
from ..models.adapters import decoder_blocks, prunable_linears, prunable_shapes
from .layer import prune_weight
from .plan import PruningPlan
from .score_cache import ScoreCache
from .transfer import check_plan


@dataclass
class PruneResult:
    """What was done: the plan, realised sparsity per layer, timings and calibration info;
    ``permutations``: per layer, the input-channel order in which its mask is N:M (plans with
    ``permute``)."""

    plan: PruningPlan
    layers: dict[str, dict] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    permutations: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def realised_sparsity(self) -> float:
        zeros = sum(v["zeros"] for v in self.layers.values())
        total = sum(v["numel"] for v in self.layers.values())
        return zeros / max(total, 1)


def needs_statistics(plan: PruningPlan) -> bool:
    return (plan.update != "none" or plan.refine != "none"
            or (plan.metric is not None and plan.metric.name != "magnitude"))


@torch.no_grad()
def prune_block_layers(i: int, block: nn.Module, block_stats: BlockStats, plan: PruningPlan, n_blocks: int,
                       result: PruneResult, *, scores: ScoreCache | None = None, only: set[str] | None = None) -> None:
    """Prune the prunable layers of block ``i`` in place (those in ``only`` when given) and record
    each one's realised sparsity (and channel order) in ``result``."""
    for name, lin in prunable_linears(block).items():
        if only is not None and f"{i}.{name}" not in only:
            continue
        target = plan.sparsity_for(i, name, n_blocks)
        new, info = prune_weight(lin.weight, block_stats.get(name), plan, target, name, block=i, scores=scores, inplace=True)
        if "order" in info:
            result.permutations[f"{i}.{name}"] = info.pop("order")
        if new.data_ptr() != lin.weight.data_ptr():
            lin.weight.data.copy_(new)
        zeros = info.pop("zeros", None)
        if zeros is None:
            zeros = int((lin.weight == 0).sum())
        result.layers[f"{i}.{name}"] = dict(target=round(target, 6), zeros=zeros, numel=lin.weight.numel(),
                                             sparsity=round(zeros / lin.weight.numel(), 6), **info)


@torch.no_grad()
def prune_model(
    model: nn.Module,
    plan: PruningPlan,
    input_ids: torch.Tensor | None = None,
    *,
    stats: list[BlockStats] | None = None,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    cache_dir=None,
    use_cache: bool = True,
    windows_info: dict | None = None,
    progress: bool = True,
    scores: ScoreCache | None = None,
    only: set[str] | None = None,
    store=None,
) -> PruneResult:
    """Prune ``model`` in place according to ``plan``.

    One-shot mode scores every layer from statistics of the dense model (given, cached or
    computed from ``input_ids``); sequential mode recomputes each block's statistics on the
    outputs of the already pruned blocks. Returns realised sparsity per layer (counted from the
    weights, or from the mask when the dense weights had no zero: the same count; not assumed). ``scores``: a score cache for one-shot pruning from ``stats`` of this
    model's dense weights (the candidate context's; score_cache.py). ``only``: one-shot, prune
    just these layers (``"<block>.<name>"``, which must hold their dense weights) and leave the
    others as they are; the result lists those layers alone. ``store``: the blocks are offloaded
    (models/offload.py): each block is brought to the device, pruned and written back in turn, and
    the statistics are read one block at a time (the same masks and weights as in memory).
    A plan that does not fit the model (layer names it lacks, a record of another model) is refused
    first (UserError; ``transfer.check_plan``, ``transfer.transfer_plan`` carries a plan over).
    """
    check_plan(plan, prunable_shapes(model))
    blocks = decoder_blocks(model)
    result = PruneResult(plan)
    start = time.perf_counter()
    need_stats = needs_statistics(plan)
    with_gram = plan.needs_gram
    if need_stats and stats is None and input_ids is None:
        raise ValueError("this plan needs calibration windows (input_ids) or precomputed statistics")

    if only is not None and plan.mode != "one-shot":
        raise ValueError("pruning some layers alone ('only') needs a one-shot plan")

    def prune_block(i: int, block: nn.Module, block_stats: BlockStats, cache: ScoreCache | None = None) -> None:
        prune_block_layers(i, block, block_stats, plan, len(blocks), result, scores=cache, only=only)

    if plan.mode == "sequential" and need_stats:
        runner = BlockRunner(model, blocks, input_ids, batch_size=batch_size, device=device, store=store)
        capture_statistics(runner, prunable_linears, mode="sequential", with_gram=with_gram, on_block=prune_block, progress=progress,
                           keep=(lambda i, block_stats: None) if store is not None else None)
        result.info["calibration"] = dict(mode="sequential", with_gram=with_gram, n_windows=int(input_ids.shape[0]),
                                          seqlen=int(input_ids.shape[1]))
    else:
        if need_stats and stats is None:
            computed = dense_statistics(model, input_ids, with_gram=with_gram, batch_size=batch_size, device=device,
                                        cache_dir=cache_dir, use_cache=use_cache, windows_info=windows_info, progress=progress,
                                        store=store)
            stats = computed.stats
            result.info["calibration"] = computed.info
        for i, block in enumerate(progress_bar(blocks, desc="pruning", unit="block", enabled=progress, leave=False)):
            if store is None:
                prune_block(i, block, stats[i] if stats is not None else {}, scores)
                continue
            with store.loaded(i, write_back=True) as block:
                prune_block(i, block, stats[i] if stats is not None else {}, scores)
    result.info["seconds"] = round(time.perf_counter() - start, 3)
    result.info["mode"] = plan.mode
    if store is not None:
        result.info["offload"] = store.mode
    return result
