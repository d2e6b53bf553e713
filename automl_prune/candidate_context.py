"""The candidate context: everything a candidate plan is scored with, loaded once (model, dense
weights, statistics, windows). Core: objectives and search spaces use it; the search drives it.

A candidate is applied to the model's weights in place (masks from scores; no model reload) and
the dense weights are restored before the next one (``with ctx.applied(plan) as result:`` does
both). Evaluating one candidate is a plain function of (plan, context), so a local loop and a Ray
worker share it.

Plans with a weight update (SparseGPT, ADMM) cost tens of seconds to apply, and the selection
stages and the final comparison apply the same ones again: their pruned weights are kept (least
recently used first out) within ``UPDATED_CACHE_BYTES`` (4 GiB by default, ``$AUTOML_PRUNE_UPDATED_CACHE_MB``
overrides; 0 turns it off), so applying one again is a copy. A model whose prunable weights exceed
the bound keeps none. Candidates that share a metric share its scores, then its ranks
(``ScoreCache``, pruning/score_cache.py, 1 GiB by default): an allocation change is a cut-off, not
a new selection. Applying the plan the weights already hold does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .calibration.capture import BlockStats
from .candidate_stream import stream_pass
from .models.adapters import decoder_blocks, model_linears
from .pruning.apply import PruneResult, prune_model
from .pruning.plan import PruningPlan
from .pruning.score_cache import ScoreCache

UPDATED_CACHE_BYTES = int(float(os.environ.get("AUTOML_PRUNE_UPDATED_CACHE_MB", 4096)) * 2**20)


@dataclass
class CandidateContext:
    """A loaded model with its dense weights kept aside, dense statistics and fixed windows.

    ``probe_ids``: windows the fast objectives use (calibration-domain text);
    ``heldout_ids``: held-out evaluation windows (perplexity objective and final comparison);
    ``calib_ids``: the calibration windows of ``stats``;
    ``memo``: per-context storage objectives use for what they compute once (dense outputs...).
    """

    model: nn.Module
    stats: list[BlockStats]
    probe_ids: torch.Tensor
    heldout_ids: torch.Tensor | None = None
    calib_ids: torch.Tensor | None = None  # the windows the statistics were captured on
    device: torch.device | str = "cpu"
    tokenizer: Any = None
    info: dict = field(default_factory=dict)
    memo: dict = field(default_factory=dict)
    #: a level database (pruning/database.py): plans on its ladders are swapped in, not pruned
    levels: Any = None
    #: the blocks' weights when they are offloaded (models/offload.py): candidates are streamed
    #: (candidate_stream.py), no dense copy is kept and nothing is restored
    store: Any = None

    def __post_init__(self) -> None:
        self.blocks = decoder_blocks(self.model)
        self.modules: dict[str, nn.Linear] = model_linears(self.blocks)
        self.dense: dict[str, torch.Tensor] = ({} if self.store is not None else
                                               {k: m.weight.detach().clone() for k, m in self.modules.items()})
        # which stored levels the weights hold now (a dict shared by shallow copies, which share the weights)
        self._applied: dict = {"levels": None}
        # pruned weights of updated plans, by plan (shared by shallow copies): see the module's docstring
        self._updated: OrderedDict[str, tuple[dict[str, torch.Tensor], PruneResult]] = OrderedDict()
        self._entry_bytes = sum(w.numel() * w.element_size() for w in self.dense.values())
        # metric scores, then their ranks, across candidates with the same metric (shared by shallow copies);
        # none with disk offload, which keeps nothing per layer in memory (they would grow with depth)
        self.scores = ScoreCache(0) if self.store is not None and self.store.mode == "disk" else ScoreCache()

    @torch.no_grad()
    def restore(self) -> None:
        """Put the dense weights back (nothing to do when they were put back and nothing was applied
        since). Contract: the context's weights change only through ``apply`` and ``restore`` (or
        are put back as they were, as ``swapped_weights`` does); what is memoised from them relies
        on it."""
        if self.store is not None:  # the store holds the dense weights and the blocks none: only forget the plan
            self._applied.update(levels=None, plan=None, result=None, memo={}, dense=True)
            return
        if self._applied.get("dense"):
            return
        for k, m in self.modules.items():
            m.weight.data.copy_(self.dense[k])
        self._applied.update(levels=None, plan=None, result=None, memo={}, dense=True)

    def apply(self, plan: PruningPlan) -> PruneResult:
        """Prune the dense weights in place with ``plan`` from the dense (one-shot) statistics, or,
        when the plan lies on the attached level database's ladders, swap in the stored layers (only
        those whose level changed; same weights). A sequential plan runs block by block on the
        calibration windows (``calib_ids``; without them, or offloaded, it is applied one-shot). The
        model stays pruned until the next ``apply`` or ``restore``; applying the plan the weights
        already hold returns its result at once."""
        if plan.mode != "one-shot" and (self.calib_ids is None or self.store is not None):
            plan = plan.model_copy(update={"mode": "one-shot"})  # no windows to run it on: from the dense statistics
        key = json.dumps(plan.model_dump(mode="json"), sort_keys=True)
        if self._applied.get("plan") == key:
            return self._applied["result"]
        memo: dict = {}
        try:
            result = self._apply(plan, key) if self.store is None else self._stream(plan, memo)
        except BaseException:  # the weights are in no known state: the next plan starts from scratch
            self._applied.update(levels=None, plan=None, result=None, memo={}, dense=False)
            raise
        self._applied.update(plan=key, result=result, memo=memo)
        return result

    @property
    def streamed(self) -> bool:
        """True when the blocks are offloaded and candidates are scored in one pass over them."""
        return self.store is not None

    def _stream(self, plan: PruningPlan, memo: dict) -> PruneResult:
        """A block-streamed candidate: one pass computing what the prepared objectives registered
        (``memo['stream_rows']``, ``memo['stream_probes']``); see candidate_stream.py."""
        if self.levels is not None:
            raise ValueError("a level database does not work with offloaded blocks")
        probes = [make(self) for make in self.memo.get("stream_probes", {}).values()]
        out = stream_pass(self, plan, rows=bool(self.memo.get("stream_rows")), probes=[req for req, _ in probes])
        memo["mask_bits"] = out.bits
        if out.rows is not None:
            memo["stream_rows"] = out.rows
        for req, finish in probes:
            finish(out.result, out.finals[req.key])
        return out.result

    @property
    def candidate_memo(self) -> dict:
        """Storage for what is computed from the weights as they are now (objectives of one
        candidate share their Gram products through it); emptied whenever the weights change by
        ``apply`` or ``restore``."""
        return self._applied.setdefault("memo", {})

    @property
    def applied_result(self) -> PruneResult | None:
        """The result of the plan the weights hold now (None when they are dense)."""
        return self._applied.get("result")

    @torch.no_grad()
    def mask_bits(self) -> dict[str, bytes]:
        """Per layer, which of its weights are zero now, packed eight to a byte (row-major);
        computed once per candidate."""
        memo = self.candidate_memo
        if "mask_bits" not in memo:
            memo["mask_bits"] = {k: np.packbits((m.weight == 0).cpu().numpy()).tobytes() for k, m in self.modules.items()}
        return memo["mask_bits"]

    def layer_digests(self) -> dict[str, bytes]:
        """Per layer, a 16-byte digest of :meth:`mask_bits` (equal digests: equal masks); computed
        once per candidate."""
        memo = self.candidate_memo
        if "layer_digests" not in memo:
            memo["layer_digests"] = {k: hashlib.blake2b(b, digest_size=16).digest() for k, b in self.mask_bits().items()}
        return memo["layer_digests"]

    def _apply(self, plan: PruningPlan, key: str) -> PruneResult:
        if plan.mode == "sequential":  # block by block on the calibration windows, each block on the pruned earlier ones
            self.restore()
            self._applied["dense"] = False
            return prune_model(self.model, plan, self.calib_ids, device=self.device, progress=False)
        levels = self.levels.levels_of(plan, len(self.blocks)) if self.levels is not None else None
        # "dense" is cleared before the weights change: a plan that fails half-way leaves them changed
        if levels is not None:
            self._applied["dense"] = False
            return self._swap(plan, levels)
        if plan.update == "none":
            key = None
        if key is not None and key in self._updated:
            weights, result = self._updated[key]
            self._updated.move_to_end(key)
            self._applied["dense"] = False
            for k, m in self.modules.items():
                m.weight.data.copy_(weights[k])
            self._applied.update(levels=None)
            return result
        result = self._reallocated(plan)
        if result is None:
            self.restore()
            self._applied["dense"] = False
            result = prune_model(self.model, plan, stats=self.stats, device=self.device, progress=False, scores=self.scores)
        if key is not None and 0 < self._entry_bytes <= UPDATED_CACHE_BYTES:
            while self._updated and (len(self._updated) + 1) * self._entry_bytes > UPDATED_CACHE_BYTES:
                self._updated.popitem(last=False)
            self._updated[key] = ({k: m.weight.detach().clone() for k, m in self.modules.items()}, result)
        return result

    def _reallocated(self, plan: PruningPlan) -> PruneResult | None:
        """When the weights hold a pruned plan that differs from ``plan`` in its allocation alone
        (``sparsity``, ``layer_sparsity``): prune again only the layers whose target changed (each
        layer is pruned one-shot from the dense statistics, independently of the others, so the
        rest already hold ``plan``'s weights); None when that does not apply."""
        prev = self._applied.get("result")
        if prev is None or self._applied.get("levels") is not None or self._applied.get("dense") or prev.plan.mode != "one-shot":
            return None
        if (prev.plan.layer_settings() != plan.layer_settings()
                or set(prev.layers) != set(self.modules) or prev.permutations):
            return None
        n = len(self.blocks)
        changed = {k for k in self.modules if plan.sparsity_of(k, n) != prev.plan.sparsity_of(k, n)}
        self._applied["dense"] = False
        for k in changed:
            self.modules[k].weight.data.copy_(self.dense[k])
        part = prune_model(self.model, plan, stats=self.stats, device=self.device, progress=False, scores=self.scores,
                           only=changed)
        layers = {k: part.layers[k] if k in changed else dict(prev.layers[k]) for k in self.modules}
        return PruneResult(plan, layers, info={**part.info, "layers_pruned": len(changed)})

    @contextmanager
    def applied(self, plan: PruningPlan) -> Iterator[PruneResult]:
        """``apply(plan)`` for the body of a ``with`` block, the dense weights restored after it
        (also when the body raises)."""
        try:
            yield self.apply(plan)
        finally:
            self.restore()

    def _swap(self, plan: PruningPlan, levels: dict[str, int]) -> PruneResult:
        self.levels.swap_into(self.modules, self.dense, levels, self._applied["levels"])
        self._applied["levels"] = dict(levels)
        result = PruneResult(plan, info=dict(mode="one-shot", swapped="level database"))
        for name, lv in levels.items():
            lad = self.levels.ladders[name]
            zeros = int((self.modules[name].weight == 0).sum())
            numel = lad.rows * lad.cols
            result.layers[name] = dict(target=lad.sparsity_at(lv), zeros=zeros, numel=numel, sparsity=round(zeros / numel, 6),
                                       level=lv)
        return result

    def pruned_delta(self, name: str) -> torch.Tensor:
        """dW = W_dense - W_pruned of one layer (its current weights; not for a streamed context)."""
        if self.store is not None:
            raise RuntimeError("a block-streamed context holds no pruned weights between passes")
        return self.dense[name] - self.modules[name].weight.detach()
