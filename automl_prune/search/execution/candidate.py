"""Score one candidate plan: a plain function of (plan, loaded context), shared by every executor."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ...candidate_context import CandidateContext
from ...errors import PruningError
from ...host_memory import release_growth
from ...pruning.plan import PruningPlan


@dataclass
class CandidateScore:
    values: list[float]
    realised_sparsity: float
    seconds: float
    mask_hash: str
    info: dict = field(default_factory=dict)


@torch.no_grad()
def mask_hash(ctx: CandidateContext, plan: PruningPlan | None = None) -> str:
    """Hash of which weights are zero in every prunable layer: equal hashes = identical masks.

    With a plan that updates the kept weights (SparseGPT, ADMM), the update and its settings are
    hashed too: equal masks then give equal weights only under the same update. Computed once per
    candidate (``ctx.candidate_memo``)."""
    key = ("mask_hash", None if plan is None or plan.update == "none" else (plan.update, plan.admm.model_dump_json(), plan.mode))
    memo = ctx.candidate_memo
    if key not in memo:
        memo[key] = masks_digest(ctx.modules, plan, bits=ctx.mask_bits())
    return memo[key]


@torch.no_grad()
def masks_digest(modules: dict, plan: PruningPlan | None = None, *, bits: dict[str, bytes] | None = None) -> str:
    """``mask_hash`` of named linear layers as they are (not memoised); ``bits``: their packed zero
    masks when already computed (``CandidateContext.mask_bits``)."""
    h = hashlib.blake2b(digest_size=16)
    if plan is not None and plan.update != "none":
        h.update(f"update={plan.update};admm={plan.admm.model_dump_json() if plan.update == 'admm' else ''}".encode())
        if plan.mode != "one-shot":  # the same masks updated on the pruned earlier blocks' outputs: other weights
            h.update(f"mode={plan.mode}".encode())
    for name, m in modules.items():
        h.update(name.encode())
        h.update(bits[name] if bits is not None else np.packbits((m.weight == 0).cpu().numpy()).tobytes())
    return h.hexdigest()


def score_candidate(ctx: CandidateContext, plan: PruningPlan, objectives: list, *, report=None,
                    known: dict[str, list[float]] | None = None) -> CandidateScore:
    """Apply ``plan`` to the context's weights and compute every objective.

    ``report(value, step) -> stop`` is passed to the first objective (early stopping of a
    single-objective study). ``known`` maps mask hashes to values already measured: a candidate
    whose masks equal an earlier one's reuses them instead of being scored again.
    """
    try:
        return _score(ctx, plan, objectives, report, known)
    finally:
        release_growth()  # what glibc holds freed stays bounded (host_memory.py)


def _score(ctx: CandidateContext, plan: PruningPlan, objectives: list, report, known) -> CandidateScore:
    start = time.perf_counter()
    result = ctx.apply(plan)
    digest = mask_hash(ctx, plan)
    if known is not None and digest in known:
        return CandidateScore(list(known[digest]), result.realised_sparsity, time.perf_counter() - start, digest,
                              {"reused": "mask"})
    values = []
    for i, objective in enumerate(objectives):
        v = float(objective(ctx, result, report if i == 0 else None))
        if not math.isfinite(v):
            raise PruningError(f"objective {objective.name} is {v}")
        values.append(v)
    info = {"swapped": result.info["swapped"]} if result.info.get("swapped") else {}
    return CandidateScore(values, result.realised_sparsity, time.perf_counter() - start, digest, info)
