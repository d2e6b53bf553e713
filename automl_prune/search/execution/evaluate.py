"""One trial's evaluation, independent of who asked for it: decode the parameters, reuse a value
already measured (same canonical form or same masks), or score the candidate. The local loop and
the Ray workers both call :func:`evaluate_params`; only how the result reaches the study differs."""

from __future__ import annotations

import logging

from objectives.base import TrialStopped

from ..study.outcome import Memo, Outcome
from .candidate import score_candidate

log = logging.getLogger(__name__)


def evaluate_params(params: dict, *, space, profile, ctx, objectives: list, memo: Memo, report=None) -> Outcome:
    """Evaluate one parameter set; never raises for a bad candidate (it becomes a failed outcome)."""
    try:
        plan = space.decode(params, profile)
        key = space.canonical_key(params)
    except Exception as exc:  # noqa: BLE001 - a bad candidate fails its trial, never the study
        return Outcome("fail", attrs={"error": f"decode: {exc}"})
    attrs = {"canonical_key": key, "plan": plan.to_dict()}
    if key in memo.by_key:
        return Outcome("complete", list(memo.by_key[key]), {**attrs, "reused": "canonical"})
    try:
        score = score_candidate(ctx, plan, objectives, report=report, known=memo.by_mask)
    except TrialStopped:
        return Outcome("pruned", attrs=attrs)
    except Exception as exc:  # noqa: BLE001
        log.warning("candidate failed: %s", exc)
        return Outcome("fail", attrs={**attrs, "error": f"{type(exc).__name__}: {exc}"})
    attrs.update(mask_hash=score.mask_hash, realised_sparsity=score.realised_sparsity, seconds=round(score.seconds, 3))
    if score.info.get("reused"):
        attrs["reused"] = score.info["reused"]
    if score.info.get("swapped"):
        attrs["swapped"] = score.info["swapped"]
    memo.by_key[key] = score.values
    memo.by_mask[score.mask_hash] = score.values
    return Outcome("complete", list(score.values), attrs)
