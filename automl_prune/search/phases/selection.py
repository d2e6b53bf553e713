"""Multi-fidelity selection after a search (``selection:`` in the config).

A fast objective drives the sampler; near its optimum many candidates differ by less than its
noise, so the search's best by that objective is partly luck. Following EvoPress's multi-step
selection, the study's best distinct candidates (and the named points) are scored again by a
slower, more faithful objective (default KL to the dense model, top-k coarsened) on fresh
calibration-domain tokens, in stages of growing size: the ``keep`` best of a stage go on to the
next, and the last stage's best is the selected plan.

- Every candidate of a stage reads the same windows (paired comparisons separate near-ties); the
  dense reference of a stage is computed once.
- A stage's windows are drawn fresh (seed ``selection.seed + stage``) from the calibration source
  and overlap none of the calibration and probe windows; the held-out text is never read.
- Stage values are kept in the study's user attributes (per stage, by trial number, for one
  setting), written after every candidate: a re-run, or a run resumed after a kill, scores only
  what is missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from optuna.trial import FrozenTrial, TrialState

from objectives import make_objective

from ...pruning.plan import PruningPlan
from ..execution.scoring import fresh_stage_windows, score_stage
from ..study.config import StudyConfig
from ..study.definition import sign_of
from ..study.results import SELECTED, SelectionRecord
from ..study.state import SearchState
from .base import Phase, StudyRun, running_total

log = logging.getLogger(__name__)
ATTR = "selection"


def setting(config: StudyConfig) -> dict:
    """What the stored stage values depend on: the selection settings and the windows they avoid."""
    c, p = config.calibration, config.probe
    selection = config.selection.model_dump(mode="json")
    for stage in selection["stages"]:  # one-shot stages keep the key they had before stages had a mode
        if stage.get("mode") == "one-shot":
            del stage["mode"]
    return dict(selection=selection, model=config.model,
                calibration=c.model_dump(mode="json"), probe=p.model_dump(mode="json"))


def setting_key(config: StudyConfig) -> str:
    return hashlib.sha256(json.dumps(setting(config), sort_keys=True).encode()).hexdigest()[:16]


def study_plan(config: StudyConfig, plan: dict) -> PruningPlan:
    """A trial's plan as the study delivers it: with ``selection.reconstruction`` (the update the
    stages add to every candidate) when there is one. The selection, the final comparison and the
    plan files all read plans through this."""
    return PruningPlan.from_dict({**plan, **config.stage_fields()})


def pool(state: SearchState, chosen: int | None = None) -> list[FrozenTrial]:
    """The fast objective's ``selection.candidates`` best trials with distinct masks, then every
    named point not among them (so the last stage compares the selected plan with them too) and
    the trial the searcher itself chose (``chosen``: the evolution's last parent), when there is one."""
    sign = state.sign
    done = [t for t in state.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    out, seen = [], set()
    for t in sorted(done, key=lambda t: (sign * t.values[0], t.number)):
        key = t.user_attrs.get("mask_hash") or t.user_attrs.get("canonical_key") or t.number
        if key in seen:
            continue
        if len(out) < state.config.selection.candidates or t.user_attrs.get("named_point") or t.number == chosen:
            seen.add(key)
            out.append(t)
    return out


def stage_windows(state: SearchState, index: int):
    """The fresh windows of stage ``index`` (identical for every candidate of the stage)."""
    sel = state.config.selection
    return fresh_stage_windows(state, sel.stages[index].tokens, sel.seed + index)


def run_selection(state: SearchState, *, chosen: int | None = None, progress: bool = True) -> SelectionRecord | None:
    """Score the pool stage by stage; returns the stages and the selected trial (None without
    ``selection`` or without completed trials). The selected trial is recorded in the study.
    ``chosen``: the trial the searcher itself chose (in the pool whatever its fast value)."""
    config = state.config
    sel = config.selection
    if sel is None:
        return None
    candidates = pool(state, chosen)
    if not candidates:
        return None
    start = time.perf_counter()
    objective = make_objective(sel.objective.name, **sel.objective.params)
    sign = sign_of(sel.objective.direction or objective.direction)
    fast_sign = state.sign
    key = setting_key(config)
    stored = state.study.user_attrs.get(ATTR) or {}
    if stored.get("key") != key:
        stored = dict(key=key, setting=setting(config), stages=[{} for _ in sel.stages])
    stages, current = [], candidates
    for i, stage in enumerate(sel.stages):
        windows = stage_windows(state, i)
        digest = windows.info["windows_sha256"]
        values = stored["stages"][i] if stored["stages"][i].get("windows_sha256") == digest else {}
        values.setdefault("windows_sha256", digest)
        values.setdefault("values", {})
        todo = [t for t in current if str(t.number) not in values["values"]]
        if todo:
            log.info("selection stage %d: %d candidates on %d x %d fresh tokens (%s; %d already scored)", i + 1,
                     len(current), windows.input_ids.shape[0], windows.input_ids.shape[1], objective.name,
                     len(current) - len(todo))

        def keep(key: str, value: float | None, i: int = i, values: dict = values) -> None:
            values["values"][key] = value
            stored["stages"][i] = values
            state.study.set_user_attr(ATTR, stored)  # after every candidate: a kill loses at most one

        plans = {str(t.number): study_plan(config, t.user_attrs["plan"]) for t in current}
        if stage.mode != "one-shot":
            plans = {k: plan.with_fields(mode=stage.mode) for k, plan in plans.items()}
        score_stage(state.ctx, objective, plans,
                    windows=windows.input_ids, done=values["values"], on_value=keep, label=f"selection stage {i + 1}",
                    progress=progress)
        scored = [t for t in current if values["values"].get(str(t.number)) is not None]
        ranked = sorted(scored, key=lambda t: (sign * values["values"][str(t.number)], fast_sign * t.values[0], t.number))
        stages.append(dict(stage=i + 1, tokens=stage.tokens, **({"mode": stage.mode} if stage.mode != "one-shot" else {}),
                           windows=int(windows.input_ids.shape[0]),
                           seqlen=int(windows.input_ids.shape[1]), windows_sha256=digest, seed=sel.seed + i,
                           candidates=[dict(trial=t.number, value=values["values"][str(t.number)], fast=t.values[0],
                                            named_point=t.user_attrs.get("named_point")) for t in ranked],
                           failed=len(current) - len(scored), kept=[t.number for t in ranked[:stage.keep]]))
        current = ranked[:stage.keep]
        if not current:
            log.warning("selection stage %d: no candidate could be scored; the fast objective's best is kept", i + 1)
            break
    state.ctx.restore()
    chosen = current[0] if current else candidates[0]
    state.study.set_user_attr(SELECTED, chosen.number)
    return dict(objective=sel.objective.model_dump(mode="json"), selected=chosen.number, fast_best=candidates[0].number,
                pool=len(candidates), stages=stages, seconds=round(time.perf_counter() - start, 1))


class SelectionPhase(Phase):
    """Multi-fidelity selection among the search's best candidates (``selection:``)."""

    name = "selection"

    def applies(self, run: StudyRun) -> bool:
        return run.config.selection is not None

    def run(self, run: StudyRun) -> None:
        chosen = None if run.selection is None else run.selection["selected"]
        run.selection = run_selection(run.state, chosen=chosen, progress=run.progress)
        if run.selection:
            log.info("selection: trial %d selected (the fast objective's best: trial %d)", run.selection["selected"],
                     run.selection["fast_best"])

    def record(self, run: StudyRun, seconds: float) -> dict:
        seconds = round(seconds, 1)
        return dict(selection_seconds=seconds, selection_seconds_total=running_total(run.before, "selection_seconds", seconds))
