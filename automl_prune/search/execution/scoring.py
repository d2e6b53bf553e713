"""Stage scoring: every candidate plan of one stage scored with one objective on the same fresh
calibration-domain windows. The one scorer of the selection stages, the evolution's second stage
and polishing's confirmation."""

from __future__ import annotations

import copy
import logging
from typing import Callable

from ...data import fresh_windows
from ...progress import progress_bar
from ..study.config import selection_seqlen
from ..study.state import SearchState
from .candidate import score_candidate

log = logging.getLogger(__name__)


def fresh_stage_windows(state: SearchState, tokens: int, seed: int, minibatches: int = 1):
    """``minibatches`` x ``tokens`` fresh calibration-domain tokens overlapping none of the
    calibration and probe windows (selection stages, the evolution's second stage)."""
    config = state.config
    c, p = config.calibration, config.probe
    n, seqlen = selection_seqlen(config, tokens)
    bos = bool(state.ctx.info.get("calibration", {}).get("bos"))
    avoid = [dict(nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed)]
    if p.source is None or p.source == c.source:
        avoid.append(dict(nsamples=p.nsamples, seqlen=p.seqlen, seed=p.seed))
    return fresh_windows(c.source, state.ctx.tokenizer, nsamples=n * minibatches, seqlen=seqlen, seed=seed, avoid=avoid,
                         data_dir=config.data_dir, split=c.split, text_field=c.text_field, bos=bos)


def score_stage(ctx, objective, plans: dict, *, windows=None, done: dict | None = None,
                on_value: Callable[[object, float | None], None] | None = None, label: str = "stage",
                progress: bool = False) -> dict:
    """Score every plan of one stage with ``objective`` on the same windows: the one stage scorer of
    the selection stages, the evolution's second stage and polishing's confirmation.

    ``plans``: key -> PruningPlan; ``windows`` (input ids, n x L): the stage's windows, scored in a
    shallow copy of ``ctx`` (same model, weights and statistics; this stage's dense reference,
    computed once); None scores on ``ctx``'s own probe windows. ``done``: key -> value already
    measured (not scored again). ``on_value(key, value)`` is called after every new value (to store
    it, so that a kill loses at most one). A candidate that fails gets None. Returns key -> value."""
    values = dict(done or {})
    todo = [k for k in plans if k not in values]
    if not todo:
        return values
    sctx = ctx
    if windows is not None:
        sctx = copy.copy(ctx)
        sctx.probe_ids, sctx.memo = windows, {}
    objective.prepare(sctx)
    for key in progress_bar(todo, desc=label, unit="candidate", enabled=progress):
        try:
            value = score_candidate(sctx, plans[key], [objective]).values[0]
        except (ValueError, RuntimeError) as exc:  # PruningError among them: the candidate fails, not the study
            log.warning("%s: candidate %s failed: %s", label, key, exc)
            value = None
        values[key] = value
        if on_value is not None:
            on_value(key, value)
    if windows is not None:
        sctx.memo.clear()
    return values
