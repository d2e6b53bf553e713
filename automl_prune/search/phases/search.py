"""The search loop: any searcher (searchers.py) with any evaluator (in-process or Ray), until the
searcher has nothing more to ask. The study records every outcome the moment its batch is scored;
trials a stopped run left running are failed and queued again by the next run (storage.fail_orphans)."""

from __future__ import annotations

import logging

from ...progress import progress_bar
from ...provenance import versions
from ..execution.evaluators import LocalEvaluator
from ..searchers.base import Searcher
from ..searchers.registry import make_searcher
from ..study.state import SearchState, tell_outcome
from .base import Phase, StudyRun, running_total, stopped_by

log = logging.getLogger(__name__)


def run_searcher(state: SearchState, *, url: str | None = None) -> Searcher:
    """The study's searcher on the config's executor (``url``: the storage the Ray workers read);
    returns the searcher, done."""
    searcher = make_searcher(state)
    if state.config.executor == "ray":
        from ..execution.ray_executor import RayEvaluator  # deferred: Ray (about 1 s to import) loads only for executor: ray

        evaluator = RayEvaluator(state, url)
    else:
        evaluator = LocalEvaluator(state)
    with evaluator:
        search_loop(state, searcher, evaluator)
    return searcher


def search_loop(state: SearchState, searcher, evaluator, *, label: str = "search", leave: bool = True) -> None:
    """Ask a batch, score it, tell the study and the searcher; until the searcher asks nothing."""
    study = state.study
    bar = progress_bar(total=state.config.budget.trials, initial=state.spent(), desc=label, unit="trial",
                       enabled=state.progress, leave=leave)
    stoppable = getattr(searcher, "stoppable", False)
    try:
        while True:
            trials = searcher.ask(evaluator.slots)
            if not trials:
                break
            outcomes = evaluator.evaluate(trials, stoppable=stoppable)
            for trial, outcome in zip(trials, outcomes):
                if outcome.state == "fail":
                    log.warning("trial %d failed: %s", trial.number, outcome.attrs.get("error"))
                tell_outcome(study, trial, outcome)
                state.new_trials += 1
                searcher.tell(trial, outcome)
            _tick(bar, state)
    finally:
        if bar is not None:
            bar.close()
        state.ctx.restore()


def _tick(bar, state: SearchState) -> None:
    if bar is None:
        return
    bar.n = state.spent()
    if state.n_objectives == 1:
        try:
            bar.set_postfix(best=f"{state.study.best_value:.5g}", refresh=False)
        except ValueError:
            pass
    else:
        bar.set_postfix(pareto=len(state.study.best_trials), refresh=False)
    bar.refresh()


class SearchPhase(Phase):
    """The study's searcher over its budget; the plan it chose (the evolution's last parent) is
    handed on as the selection so far."""

    name = "search"

    def run(self, run: StudyRun) -> None:
        state, config = run.state, run.config
        log.info("search: %s on the %s executor, %d trials finished so far, budget %s trials / %s s",
                 config.searcher.name, config.executor, state.finished(), config.budget.trials, config.budget.timeout)
        run.searcher = run_searcher(state, url=run.url)
        run.selection = run.searcher.chosen()

    def record(self, run: StudyRun, seconds: float) -> dict:
        state, config, database = run.state, run.config, run.searcher.database_seconds
        finished = state.finished()
        meta = dict(state.ctx.info, searcher=config.searcher.model_dump(), directions=state.directions,
                    budget=config.budget.model_dump(), finished_trials=finished,
                    stopped_by=stopped_by(config, state.spent()), executor=config.executor, versions=versions(),
                    search_seconds=round(seconds, 1), trials_this_run=state.new_trials,
                    candidates_per_minute=round(60 * state.new_trials / seconds, 2) if seconds > 0 else None,
                    search_seconds_total=running_total(run.before, "search_seconds", seconds),
                    **({} if database is None else {"database_seconds": database}),
                    **({} if config.recipe is None else {"recipe": config.recipe.model_dump()}))
        log.info("search: %d trials this run in %.0f s, %d finished in the study (%s)", state.new_trials, seconds,
                 finished, meta["stopped_by"])
        return meta
