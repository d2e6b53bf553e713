"""Per-layer metric scores kept across candidates that share a metric, so that a change of the
sparsity allocation alone is a cut-off on a stored order instead of a new selection.

A candidate's unstructured mask depends on the metric (with its comparison group) and on each
layer's sparsity. The first candidate with a metric computes its scores and selects as usual
(``masks.unstructured_mask``) and keeps the scores; the second with the same metric turns them
into each group's *rank* (its position in a stable sort, ties to the lower index, exactly the
order ``unstructured_mask`` breaks ties in) and drops the scores; from then on the layer's mask at
any sparsity is ``rank < k``: one comparison per weight, no scores and no selection. Masks are
identical to ``unstructured_mask``'s (tested).

Memory: a layer's scores take 4 bytes a weight, its rank 2 (row groups of at most 32,767 inputs)
or 4 (whole-matrix groups). Metrics are kept least recently used first out within
``budget_bytes`` (``SCORE_CACHE_BYTES``: 1 GiB by default, ``$AUTOML_PRUNE_SCORE_CACHE_MB``
overrides, 0 turns it off); SmolLM2-135M's 106 M prunable weights take 424 MB of scores, then
212 MB of ranks, per metric. A layer that would not fit is not kept. Only unstructured masks in
the ``row`` and ``matrix`` groups are cached (N:M masks do not depend on the allocation).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable

import torch

from .masks import group_count, unstructured_mask

SCORE_CACHE_BYTES = int(float(os.environ.get("AUTOML_PRUNE_SCORE_CACHE_MB", 1024)) * 2**20)
CACHED_GROUPS = ("row", "matrix")


def group_rank(score: torch.Tensor, group: str) -> torch.Tensor:
    """Each score's position in its group's stable ascending order (``row``: per output row,
    int16 when the row is short enough, else int32; ``matrix``: over the whole matrix, int32,
    shaped like ``score``). ``rank < k`` is the mask that prunes the k lowest, ties to the lower
    index. Scores must be finite."""
    out, inp = score.shape
    flat = score.reshape(1, -1) if group == "matrix" else score
    n = flat.shape[1]
    dtype = torch.int16 if n <= torch.iinfo(torch.int16).max else torch.int32
    order = torch.sort(flat, dim=1, stable=True).indices
    positions = torch.arange(n, dtype=dtype, device=score.device).expand(flat.shape[0], n)
    rank = torch.empty(flat.shape, dtype=dtype, device=score.device).scatter_(1, order, positions)
    return rank.reshape(out, inp)


def rank_mask(rank: torch.Tensor, sparsity: float, group: str) -> torch.Tensor:
    """The mask (True = pruned) of ``sparsity`` from a :func:`group_rank` rank."""
    size = rank.numel() if group == "matrix" else rank.shape[1]
    return rank < group_count(size, sparsity)


class ScoreCache:
    """Scores, then ranks, per (metric key, layer); see the module's docstring."""

    def __init__(self, budget_bytes: int = SCORE_CACHE_BYTES):
        self.budget = budget_bytes
        self.entries: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()  # metric key -> layer -> scores | rank
        self.bytes = 0
        self.hits = 0  # masks cut from a stored rank
        self.zeros: dict[str, int] = {}  # layer -> zeros of its dense weight (counted once)

    def mask(self, metric: str, layer: str, group: str, sparsity: float,
             scores: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The unstructured mask of ``layer`` at ``sparsity`` for the metric whose key is
        ``metric`` (its spec and comparison group); ``scores()`` computes the layer's scores when
        they are not stored."""
        if group not in CACHED_GROUPS or self.budget <= 0:
            return unstructured_mask(scores(), sparsity, group=group)
        layers = self.entries.get(metric)
        if layers is not None:
            self.entries.move_to_end(metric)
        stored = layers.get(layer) if layers is not None else None
        if stored is None:
            s = scores()
            self._keep(metric, layer, s)
            return unstructured_mask(s, sparsity, group=group)
        if stored.is_floating_point():  # second use: scores -> rank
            rank = group_rank(stored, group)
            self._replace(metric, layer, rank)
            stored = rank
        self.hits += 1
        return rank_mask(stored, sparsity, group)

    def dense_zeros(self, layer: str, weight: torch.Tensor) -> int:
        """How many weights of ``layer``'s dense ``weight`` are zero (counted on first use; the cache
        belongs to one model's dense weights)."""
        if layer not in self.zeros:
            self.zeros[layer] = int((weight == 0).sum())
        return self.zeros[layer]

    def _keep(self, metric: str, layer: str, t: torch.Tensor) -> None:
        size = t.numel() * t.element_size()
        if size > self.budget:
            return
        while self.entries and self.bytes + size > self.budget:
            oldest = next(iter(self.entries))
            if oldest == metric and len(self.entries) == 1:
                return  # the metric being filled already holds the budget: keep what it has
            self._drop(oldest)
        self.entries.setdefault(metric, {})[layer] = t
        self.entries.move_to_end(metric)
        self.bytes += size

    def _replace(self, metric: str, layer: str, t: torch.Tensor) -> None:
        old = self.entries[metric][layer]
        self.bytes += t.numel() * t.element_size() - old.numel() * old.element_size()
        self.entries[metric][layer] = t

    def _drop(self, metric: str) -> None:
        for t in self.entries.pop(metric).values():
            self.bytes -= t.numel() * t.element_size()

    def clear(self) -> None:
        self.entries.clear()
        self.bytes = 0
