"""Evaluators: where a batch of asked trials is scored. The in-process one is here; the Ray worker
pool is ray_executor.RayEvaluator. Both record each trial's heartbeat while it is scored and
return one :class:`~automl_prune.search.execution.evaluate.Outcome` per trial, in order; neither tells the
study (the loop does)."""

from __future__ import annotations

import contextlib
from typing import Callable

import optuna

from ..study.outcome import Outcome
from ..study.state import SearchState
from ..study.storage import heartbeat
from .evaluate import evaluate_params


def _reporter(trial: optuna.Trial) -> Callable[[float, int], bool]:
    def report(value: float, step: int) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    return report


@contextlib.contextmanager
def heartbeats(study: optuna.Study, trials: list):
    """Every trial of a batch beats while the batch is scored."""
    with contextlib.ExitStack() as stack:
        for trial in trials:
            stack.enter_context(heartbeat(study, trial))
        yield


class LocalEvaluator:
    """Scores each trial in this process, one after the other, against the loaded context."""

    slots = 1

    def __init__(self, state: SearchState):
        self.state = state

    def __enter__(self) -> "LocalEvaluator":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def evaluate(self, trials: list, *, stoppable: bool = False) -> list[Outcome]:
        """``stoppable``: a single-objective trial reports its partial values to the study's pruner,
        which may stop it (an outcome ``pruned``)."""
        s = self.state
        outcomes = []
        for trial in trials:
            report = _reporter(trial) if stoppable and s.n_objectives == 1 else None
            with heartbeat(s.study, trial):
                outcomes.append(evaluate_params(trial.params, space=s.space, profile=s.profile, ctx=s.ctx,
                                                objectives=s.objectives, memo=s.memo, report=report))
        return outcomes
