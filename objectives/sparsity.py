"""``sparsity``: the realised sparsity of the candidate, counted from the pruned weights."""

from __future__ import annotations

from automl_prune.candidate_context import CandidateContext
from automl_prune.pruning.apply import PruneResult

from .base import Objective, Reporter, register
from .common import ObjectiveError, finite


@register
class Sparsity(Objective):
    name = "sparsity"
    direction = "maximize"

    def __init__(self) -> None:
        pass

    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        if not result.layers:
            raise ObjectiveError("objective 'sparsity': the prune result lists no layers")
        return finite(self.name, result.realised_sparsity)
