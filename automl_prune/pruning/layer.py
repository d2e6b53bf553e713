"""Prune one weight matrix according to a plan: scores -> mask (optionally in a permuted channel
order, optionally refined by DSnoT) -> weight update (none, SparseGPT or ADMM)."""

from __future__ import annotations

import torch

from ..calibration.stats import LinearStats
from ..errors import PruningError
from ..metrics.kernel import default_group, score
from .admm import admm_prune
from .dsnot import dsnot_refine
from .masks import all_finite, nm_mask, unstructured_mask
from .permutation import nm_permutation, permuted_nm_mask
from .plan import PruningPlan
from .score_cache import ScoreCache
from .sparsegpt import sparsegpt_prune


#: What to do about non-finite statistics: the commands that can recompute them (``prune --no-cache``;
#: ``search`` has no such flag, its statistics are recomputed once their cache entry is deleted).
RECOMPUTE_HINT = ("if the statistics came from the cache, recompute them: rerun `automl-prune prune` with --no-cache, "
                  "or delete the cache's stats/ folder (under --cache-dir, $AUTOML_PRUNE_CACHE or ~/.cache/automl-prune)")


def _where(name: str, block: int | None) -> str:
    """`` in layer <block>.<name>`` (``name`` alone when the block is not known; empty without a
    name), for messages."""
    if not name:
        return ""
    return f" in layer {name}" if block is None else f" in layer {block}.{name}"


def metric_scores(weight: torch.Tensor, stats: LinearStats | None, plan: PruningPlan, label: str = "") -> torch.Tensor:
    """The plan's metric scores of ``weight``; PruningError if any is not finite (``label``: where,
    from ``_where``)."""
    s = score(plan.metric, weight, stats)
    if not all_finite(s):
        bad = int((~torch.isfinite(s)).sum())
        raise PruningError(f"metric {plan.metric.name} gave {bad} non-finite scores{label} "
                           f"({RECOMPUTE_HINT})")
    return s


def mask_from_scores(s: torch.Tensor, plan: PruningPlan, sparsity: float, perm: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask (True = pruned) from scores, the plan's pattern and comparison group; N:M in
    the permuted channel order when ``perm`` is given."""
    if plan.nm is not None:
        return nm_mask(s, *plan.nm) if perm is None else permuted_nm_mask(s, perm, *plan.nm)
    return unstructured_mask(s, sparsity, group=plan.group or default_group(plan.metric))


def _gradual_selector(stats: LinearStats, plan: PruningPlan, sparsity: float, perm: torch.Tensor | None, label: str = ""):
    """ADMM's gradual mask selection: the plan's metric on the iterate, at a fraction of the final
    sparsity (N:M: the N:M survivors plus the best of the rest, exactly N:M at the end)."""

    def select(w: torch.Tensor, fraction: float) -> torch.Tensor:
        s = metric_scores(w, stats, plan, label)
        if plan.nm is None:
            return unstructured_mask(s, sparsity * fraction, group=plan.group or default_group(plan.metric))
        final = mask_from_scores(s, plan, sparsity, perm)
        if fraction >= 1.0:
            return final
        n, m = plan.nm
        return unstructured_mask(s.masked_fill(~final, torch.inf), (1 - n / m) * fraction, group="matrix")

    return select


def metric_key(plan: PruningPlan) -> str:
    """What an unstructured mask depends on besides the layer and its sparsity: the metric and its
    comparison group (the key of a :class:`ScoreCache`)."""
    return f"{plan.metric.model_dump_json()}|{plan.group or default_group(plan.metric)}"


def prune_weight(weight: torch.Tensor, stats: LinearStats | None, plan: PruningPlan, sparsity: float,
                 name: str = "", *, block: int | None = None, scores: ScoreCache | None = None,
                 inplace: bool = False) -> tuple[torch.Tensor, dict]:
    """The pruned copy of ``weight`` (same dtype; with ``inplace``, ``weight`` itself pruned in place
    where the plan allows it, else a copy) and a small info dict (``order``: the channel
    permutation as a tensor, when the plan permutes). ``name``: the layer's name in its block
    (``mlp.down_proj``), for the refinement's ``skip`` list and messages; ``block``: its block's
    index, for messages and (with ``scores``) the layer's key in the score cache: an unstructured
    mask without permutation or refinement is then cut from the stored order when the same metric
    was seen before (score_cache.py; identical masks)."""
    w = weight.detach().float()
    info: dict = {}
    label = _where(name, block)
    if plan.needs_gram and (stats is None or stats.gram is None):
        raise PruningError(f"the {plan.update} update needs calibration statistics with a Gram matrix")
    if plan.metric is None:  # SparseGPT chooses its own mask
        nm = plan.nm
        new, _, info = sparsegpt_prune(w, stats, sparsity=sparsity, prune_n=nm[0] if nm else 0, prune_m=nm[1] if nm else 0)
        return _checked(new, weight, label), info
    if sparsity <= 0.0 and plan.nm is None:
        return weight.detach().clone(), info

    if scores is not None and plan.nm is None and plan.permute == "none" and plan.refine == "none":
        group = plan.group or default_group(plan.metric)
        layer = f"{block}.{name}"
        mask = scores.mask(metric_key(plan), layer, group, sparsity, lambda: metric_scores(w, stats, plan, label))
        if plan.update == "none" and scores.dense_zeros(layer, w) == 0:
            info["zeros"] = int(mask.sum())  # the zeros of the pruned weight: the mask's, as the dense one has none
        return _updated(w, weight, stats, plan, sparsity, mask, None, info, label, inplace)

    s = metric_scores(w, stats, plan, label)
    perm = None
    if plan.permute != "none":
        p = nm_permutation(s, *plan.nm, lsa=plan.permute == "lsa")
        perm = p.order
        info.update(permutation=p.method, retained_gain=round(p.retained / max(p.retained_identity, 1e-30) - 1, 6), order=perm)
    mask = mask_from_scores(s, plan, sparsity, perm)

    if plan.refine == "dsnot" and not set(name.split(".")) & set(plan.dsnot.skip):
        if stats is None:
            raise PruningError("DSnoT needs calibration statistics (input mean and variance)")
        opts = plan.dsnot
        cols = perm if perm is not None else slice(None)
        r = dsnot_refine(w[:, cols], mask[:, cols], stats.mean[cols], stats.var[cols], s[:, cols], nm=plan.nm,
                         max_cycles=opts.max_cycles, threshold=opts.threshold, var_power=opts.var_power,
                         same_sign=opts.same_sign)
        mask = mask.clone()
        mask[:, cols] = r.mask  # back to the original channel order
        info.update(dsnot_swaps=r.swaps)
    return _updated(w, weight, stats, plan, sparsity, mask, perm, info, label, inplace)


def _updated(w: torch.Tensor, weight: torch.Tensor, stats: LinearStats | None, plan: PruningPlan, sparsity: float,
             mask: torch.Tensor, perm: torch.Tensor | None, info: dict, label: str,
             inplace: bool = False) -> tuple[torch.Tensor, dict]:
    """The pruned copy of ``weight`` from its float32 copy ``w`` and the mask: the plan's update
    (none, SparseGPT or ADMM) applied (without an update and with ``inplace``: ``weight`` itself
    when it is float32)."""
    if plan.update == "sparsegpt":
        new, mask, sg_info = sparsegpt_prune(w, stats, mask=mask)
        info.update(sg_info)
    elif plan.update == "admm":
        opts = plan.admm
        select = _gradual_selector(stats, plan, sparsity, perm, label) if opts.gradual else None
        new, mask, admm_info = admm_prune(w, stats.gram, mask, select=select, iterations=opts.iterations, rho=opts.rho,
                                          damping=opts.damping, gradual_iterations=opts.gradual_iterations,
                                          gradual_score=opts.gradual_score)
        info.update(admm_info)
    else:
        # in place when asked to, or when w is a float32 copy of its own (a weight of another dtype)
        return zeroed(w, mask, inplace=inplace or w.data_ptr() != weight.data_ptr()).to(weight.dtype), info
    return _checked(new, weight, label), info


def zeroed(w: torch.Tensor, mask: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``w.masked_fill(mask, 0.0)`` computed as ``w * ~mask + 0.0`` (a multiply runs on every
    core, masked_fill on one: 4x faster here; ``+ 0.0`` turns the -0.0 of a pruned negative weight
    into masked_fill's +0.0), into ``w`` itself with ``inplace``. Bit for bit masked_fill's result
    except for a kept weight that is -0.0, which comes out +0.0 (a zero either way). A non-finite
    weight (where ``x * 0`` is not 0) takes masked_fill itself."""
    out = w.mul_(~mask) if inplace else w.mul(~mask)
    out.add_(0.0)
    if not all_finite(out):
        return out.masked_fill_(mask, 0.0)
    return out


def _checked(new: torch.Tensor, weight: torch.Tensor, label: str = "") -> torch.Tensor:
    if not all_finite(new):
        raise PruningError(f"pruning produced non-finite weights{label}")
    return new.to(weight.dtype)
