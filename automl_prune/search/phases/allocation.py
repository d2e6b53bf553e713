"""The allocation phase of a joint plan (``allocation_search:``): metric x allocation x update in one study.

The first phase searches the metric (and pattern options) on masks; its selection stages update
every survivor (``selection.reconstruction``), so metric x update is paid by the survivors only.
The plan they select then starts EvoPress's evolution of the per-layer allocation: a level
database of that plan's layers (its metric, its update) at the ladder's levels around the base
allocation, and generations of level-switch children scored as a swap of stored layers and a
forward pass (search/searchers/evolution.py), so allocation x update is paid once per layer and level.

The phase is its own Optuna study, ``<study>-allocation``, in the study's storage: its first trial
is the selected plan at the base allocation (named point ``selected``; the metric parameters carry
over unchanged to every child), its generation record lives there, and a re-run resumes it. A
study whose first phase selects another plan on a re-run refuses to continue the old phase.
"""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial, TrialState

from ...errors import UserError
from ...metrics.kernel import default_group
from ...pruning.plan import PruningPlan
from ..searchers.base import Searcher
from ..study.definition import Study
from ..study.state import SearchState, remember_finished
from ..study.storage import fail_orphans, study_name
from .base import Phase, StudyRun, running_total, stopped_by
from .search import run_searcher

log = logging.getLogger(__name__)
START = "selected"  # the named point of the phase's first trial


def phase_study_name(config) -> str:
    return f"{study_name(config)}-allocation"


def phase_space(config, group: str) -> dict:
    """The first phase's space with the levels allocation (its ladders in whole units of the start
    plan's comparison ``group``), and the stages' update fixed in it (the database holds updated
    layers, so the plans are updated as they are scored)."""
    space = {**config.space, "allocation": {"group": group, **config.allocation_search.allocation}}
    recon = config.selection.reconstruction if config.selection is not None else None
    if recon is not None:
        space["reconstruction"] = {**(config.space.get("reconstruction") or {}), "update": [recon.update],
                                   "refine": [recon.refine], "admm": recon.admm.model_dump()}
    return space


def phase_config(config, group: str):
    """The phase as a study config of its own: the evolution over ``phase_space``, one objective,
    no selection (its stages are the evolution's), its own study name and budget."""
    phase = config.allocation_search
    return config.model_copy(update=dict(
        space=phase_space(config, group), searcher=phase.searcher, budget=phase.budget, selection=None, polish=None,
        objectives=[phase.objective or config.objectives[0]], study_name=phase_study_name(config)))


def start_params(trial: FrozenTrial, space) -> dict:
    """The selected trial's parameters at the base allocation (every level 0)."""
    levels = [k for k in space.distributions() if k.startswith(space.allocation.prefix)]
    keep = {k: v for k, v in trial.params.items() if not k.startswith(space.allocation.prefix)}
    return {**keep, **{k: 0 for k in levels}}


def run_allocation_phase(state: SearchState, selected: FrozenTrial, url: str) -> tuple[SearchState, Searcher]:
    """Evolve the allocation of ``selected`` (a trial of the first phase); returns the phase's state
    (its study, space and objective) and its searcher, done (``chosen()``: the last parent, the fast best)."""
    plan = PruningPlan.from_dict(selected.user_attrs["plan"])
    config = phase_config(state.config, plan.group or default_group(plan.metric))
    same = config.objectives[0] == state.config.objectives[0]
    phase = Study.from_config(config, url=url, objectives=state.objectives if same else None)
    space = phase.space.bind(state.profile)
    if not same:
        for objective in phase.objectives:
            objective.prepare(state.ctx)
    study = phase.open()
    orphans = fail_orphans(study)  # a killed run's children: failed and queued again, as the first phase's
    if orphans:
        log.warning("allocation phase: trials %s were left running by a driver that stopped: marked failed, queued again",
                    ", ".join(map(str, orphans)))
    start = start_params(selected, space)
    origin = {"trial": selected.number, "params": selected.params}
    if not study.trials:
        study.set_user_attr("start", origin)
        study.enqueue_trial(start, user_attrs={"named_point": START, "start_trial": selected.number})
    elif study.user_attrs.get("start") != origin:
        was = (study.user_attrs.get("start") or {}).get("trial")
        raise UserError(f"the allocation phase (study {config.study_name!r}) started from trial {was}, but the first phase "
                        f"now selects trial {selected.number}; use another --out folder or study_name")
    sub = SearchState(config=config, study=study, space=space, profile=state.profile, objectives=phase.objectives,
                      ctx=state.ctx, progress=state.progress)
    remember_finished(study, sub.memo)
    log.info("allocation phase: evolution of trial %d's allocation (%s), study %r, budget %s trials / %s s",
             selected.number, config.space["allocation"].get("base", "uniform"), config.study_name, config.budget.trials,
             config.budget.timeout)
    searcher = run_searcher(sub, url=url)  # on Ray the children go to the workers, as the first phase's did
    return sub, searcher


def selected_trial(study: optuna.Study, selection: dict | None, sign: float) -> FrozenTrial:
    """The first phase's plan: the one its selection chose, else its fast objective's best."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    if not done:
        raise UserError("the allocation phase needs a completed trial of the first phase; none completed (see the log)")
    if selection:
        return next(t for t in done if t.number == selection["selected"])
    return min(done, key=lambda t: (sign * t.values[0], t.number))


class AllocationPhase(Phase):
    """A joint plan's second phase (``allocation_search:``): the evolution of the allocation of the
    plan selected so far, in a study of its own; its selected plan is the one delivered."""

    name = "allocation phase"

    def applies(self, run: StudyRun) -> bool:
        return run.config.allocation_search is not None

    def run(self, run: StudyRun) -> None:
        state = run.state
        first = selected_trial(run.study, run.selection, state.sign)
        run.delivered, self.searcher = run_allocation_phase(state, first, run.url)
        run.first_phase = (state, run.selection, first.number)
        run.selection = self.searcher.chosen()
        log.info("allocation phase: trial %s of %s selected (from trial %d of the first phase)",
                 None if run.selection is None else run.selection["selected"], run.delivered.config.study_name, first.number)

    def record(self, run: StudyRun, seconds: float) -> dict:
        phase, seconds = run.delivered, round(seconds, 1)
        return dict(allocation_phase=dict(
            study=phase.config.study_name, start_trial=run.first_phase[2], seconds=seconds,
            database_seconds=self.searcher.database_seconds, trials_this_run=phase.new_trials,
            finished_trials=phase.finished(), stopped_by=stopped_by(phase.config, phase.spent()),
            budget=phase.config.budget.model_dump(), searcher=phase.config.searcher.model_dump(),
            seconds_total=running_total(run.before.get("allocation_phase") or {}, "seconds", seconds)))
