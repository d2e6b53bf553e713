"""The search loop: any searcher (searchers.py) with any evaluator (in-process or Ray), until the
searcher has nothing more to ask. The study records every outcome the moment its batch is scored;
trials a stopped run left running are failed and queued again by the next run (storage.fail_orphans)."""

from __future__ import annotations

import logging

from ..progress import progress_bar
from .evaluators import LocalEvaluator
from .searcher import Searcher
from .searchers import make_searcher
from .state import SearchState, tell_outcome

log = logging.getLogger(__name__)


def run_searcher(state: SearchState, *, url: str | None = None) -> Searcher:
    """The study's searcher on the config's executor (``url``: the storage the Ray workers read);
    returns the searcher, done."""
    searcher = make_searcher(state)
    if state.config.executor == "ray":
        from .ray_executor import RayEvaluator  # deferred: Ray (about 1 s to import) loads only for executor: ray

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
