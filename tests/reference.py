"""Small helpers the tests check the package with, which the package itself does not need (they
lived in it once): counts and checks of masks, a metric's mask in one call, a ladder's pruned
weights, an alias's file."""

from __future__ import annotations

from pathlib import Path

import torch

from automl_prune.models.aliases import ResolvedAlias, get_alias
from automl_prune.pruning.layer import mask_from_scores, metric_scores
from automl_prune.pruning.levels import LayerLadder
from automl_prune.pruning.masks import check_nm


def per_row_counts(x: torch.Tensor) -> torch.Tensor:
    """Number pruned (mask True / weight zero) in each row of a 2-D mask or weight (int64, (out,))."""
    return (x if x.dtype == torch.bool else x == 0).sum(dim=-1)


def check_permuted_nm(x: torch.Tensor, perm: torch.Tensor, n: int, m: int) -> bool:
    """True if ``x`` (weight or bool mask, True = pruned) is N:M once its columns are permuted."""
    return check_nm(x[:, perm.to(x.device)], n, m)


def metric_mask(weight: torch.Tensor, stats, plan, sparsity: float) -> torch.Tensor:
    """Boolean mask (True = pruned) from the plan's metric, pattern and comparison group."""
    return mask_from_scores(metric_scores(weight, stats, plan), plan, sparsity)


def pruned_at(ladder: LayerLadder, level: int) -> int:
    """Weights the layer of ``ladder`` prunes at ``level`` (its groups: rows, or the whole matrix)."""
    return ladder.zeros_at(level) * (ladder.rows if ladder.group == "row" else 1)


def resolve_alias(spec: str, cache_root: Path) -> ResolvedAlias:
    """The GGUF file behind an alias (assembled if needed); UserError for an unknown alias."""
    return get_alias(spec).locate(cache_root)
