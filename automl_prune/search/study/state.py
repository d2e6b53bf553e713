"""What the search loop, the searchers and the choices after the search share: the running study,
its loaded candidate context and the values measured so far; and how an outcome reaches the study."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import optuna
from optuna.trial import TrialState

from ...candidate_context import CandidateContext
from .config import StudyConfig
from .definition import Directed
from .outcome import Memo, Outcome
from .storage import STALE

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


@dataclass
class SearchState(Directed):
    """A study being searched: the Optuna study, the space bound to the model, the prepared
    objectives, the context candidates are scored in, and the memo of measured values."""

    config: StudyConfig
    study: optuna.Study
    space: object
    profile: object
    objectives: list
    ctx: CandidateContext
    memo: Memo = field(default_factory=Memo)
    started: float = field(default_factory=time.perf_counter)
    new_trials: int = 0
    progress: bool = True  # progress bars (the loop's, and the searchers' own long steps)
    repeats_cost: bool = False  # every finished trial counts against the budget (polishing's fixed trial count)

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.study.get_trials(deepcopy=False))

    def spent(self) -> int:
        """The trials that count against the budget: the finished ones, less those that reused the
        value of an equal candidate measured before (a repeat never costs a budget slot) and those
        failed as stale (their driver was killed; the retry counts instead). With ``repeats_cost``
        every finished trial counts."""
        if self.repeats_cost:
            return self.finished()
        return sum(t.state in FINISHED and not t.user_attrs.get("reused") and t.user_attrs.get("error") != STALE
                   for t in self.study.get_trials(deepcopy=False))

    def exclude_from_budget(self, seconds: float) -> None:
        """``seconds`` just spent (a level database's build) do not count against budget.timeout."""
        self.started += seconds

    def budget_left(self) -> bool:
        b = self.config.budget
        if b.trials is not None and self.spent() >= b.trials:
            return False
        return b.timeout is None or time.perf_counter() - self.started < b.timeout

    def trials_left(self) -> int | None:
        """Trials the budget still allows (None: no trial budget)."""
        b = self.config.budget
        return None if b.trials is None else max(0, b.trials - self.spent())


def remember_finished(study: optuna.Study, memo: Memo) -> None:
    """Fill the memo of measured values from the study's completed trials (resume)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("canonical_key"):
            memo.by_key.setdefault(t.user_attrs["canonical_key"], list(t.values))
        if t.user_attrs.get("mask_hash"):
            memo.by_mask.setdefault(t.user_attrs["mask_hash"], list(t.values))


def tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    """Record an outcome in the study: user attributes first, then the values or the state."""
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    if outcome.state == "complete":
        study.tell(trial, outcome.values)
    else:
        study.tell(trial, state=STATES[outcome.state])
