"""Prune one weight matrix according to a plan: scores -> mask -> (optional) weight update."""

from __future__ import annotations

import torch

from ..calibration.stats import LinearStats
from ..errors import PruningError
from ..metrics.kernel import default_group, score
from .masks import nm_mask, unstructured_mask
from .plan import PruningPlan
from .sparsegpt import sparsegpt_prune


def metric_mask(weight: torch.Tensor, stats: LinearStats | None, plan: PruningPlan, sparsity: float) -> torch.Tensor:
    """Boolean mask (True = pruned) from the plan's metric, pattern and comparison group."""
    s = score(plan.metric, weight, stats)
    if not torch.isfinite(s).all():
        bad = int((~torch.isfinite(s)).sum())
        raise PruningError(f"metric {plan.metric.name} gave {bad} non-finite scores")
    if plan.nm is not None:
        return nm_mask(s, *plan.nm)
    return unstructured_mask(s, sparsity, group=plan.group or default_group(plan.metric))


def prune_weight(weight: torch.Tensor, stats: LinearStats | None, plan: PruningPlan, sparsity: float) -> tuple[torch.Tensor, dict]:
    """The pruned copy of ``weight`` (same dtype) and a small info dict."""
    w = weight.detach().float()
    info: dict = {}
    if plan.update == "sparsegpt":
        if stats is None or stats.gram is None:
            raise PruningError("the SparseGPT update needs calibration statistics with a Gram matrix")
        mask = None if plan.metric is None else metric_mask(w, stats, plan, sparsity)
        nm = plan.nm
        new, mask, info = sparsegpt_prune(w, stats, sparsity=sparsity, prune_n=nm[0] if nm else 0, prune_m=nm[1] if nm else 0, mask=mask)
    else:
        if sparsity <= 0.0 and plan.nm is None:
            return weight.detach().clone(), info
        new = w.masked_fill(metric_mask(w, stats, plan, sparsity), 0.0)
    if not torch.isfinite(new).all():
        raise PruningError("pruning produced non-finite weights")
    return new.to(weight.dtype), info
