"""The searcher contract: ask a batch of trials, be told their outcomes.

A searcher proposes candidates as trials of the study (``ask``), and the loop (loop.py) tells it
each outcome once the study has recorded it (``tell``). ``ask(slots)`` returns the next batch, up
to ``slots`` trials where the searcher can choose the size (Optuna samplers) or a whole generation
(pymoo, the evolution); an empty batch ends the search (the budget spent, or nothing new to
propose). Every searcher is seeded from the config, starts with the named points (the known
methods, enqueued when the study is new) and resumes from the study alone: nothing but the Optuna
storage is read back.

:class:`GenerationSearcher` lets an algorithm be written as one generator that yields batches and
receives them back as finished trials; :class:`OptunaSearcher` runs an Optuna sampler.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Generator

import optuna
from optuna.trial import FrozenTrial

from ..study.outcome import Outcome
from ..study.results import SelectionRecord
from ..study.state import SearchState

log = logging.getLogger(__name__)
Batches = Generator[list[optuna.Trial], list[FrozenTrial], None]


class Searcher:
    """Proposes trials of ``state.study``; see the module's docstring for the contract."""

    database_seconds: float | None = None  # a level database this searcher built (outside budget.timeout)

    def __init__(self, state: SearchState):
        self.state = state
        self.study = state.study
        self.dists = state.space.distributions()
        self.trials_before = len(self.study.trials)  # what the sampler's seed is drawn from (resume)
        if not self.study.trials and state.config.searcher.seed_named_points:
            for name, point in state.space.named_points().items():
                self.study.enqueue_trial(point, user_attrs={"named_point": name})

    def ask(self, slots: int) -> list[optuna.Trial]:
        raise NotImplementedError

    def tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        """``outcome`` of ``trial`` (already recorded in the study by the loop)."""

    def chosen(self) -> SelectionRecord | None:
        """The plan the searcher itself chose, in the shape of a selection (the evolution's last
        parent); None: the study's best by its objective is the searcher's answer."""
        return None

    def queued(self, params: dict, attrs: dict | None = None) -> optuna.Trial:
        """A trial of exactly ``params`` (enqueued, then asked)."""
        self.study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)
        return self.study.ask(self.dists)


def sampler_seed(seed: int | None, trials_so_far: int) -> int | None:
    """The sampler's seed for a run that starts with ``trials_so_far`` trials in the study: the
    configured seed for a new study; for a resumed one a seed drawn from (seed, trials so far), so
    the resumed sampler does not replay the proposals of the first run (a seeded random start-up
    would otherwise propose the same candidates again)."""
    if seed is None or trials_so_far == 0:
        return seed
    return int(hashlib.sha256(f"{seed}:{trials_so_far}".encode()).hexdigest()[:8], 16)


MAX_REPEATS = 100  # proposals in a row equal to measured candidates: the sampler has run out of new ones


class OptunaSearcher(Searcher):
    """An Optuna sampler (TPE, NSGA-III or random) asked a trial per free slot while the budget lasts.
    A proposal equal to a candidate already measured reuses its value and costs no budget;
    ``MAX_REPEATS`` of them in a row end the search (the space holds nothing new for this sampler).
    A single-objective trial may be stopped early by the study's pruner (``stoppable``)."""

    stoppable = True

    def __init__(self, state: SearchState, sampler_of):
        super().__init__(state)
        self.study.sampler = sampler_of(sampler_seed(state.config.searcher.seed, self.trials_before))
        self.repeats = 0

    def ask(self, slots: int) -> list[optuna.Trial]:
        if self.repeats >= MAX_REPEATS:
            log.info("search: the last %d proposals all repeated measured candidates; stopping", self.repeats)
            return []
        if not self.state.budget_left():
            return []
        left = self.state.trials_left()
        n = slots if left is None else min(slots, left)
        return [self.study.ask(self.dists) for _ in range(max(1, n))]

    def tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        self.repeats = self.repeats + 1 if outcome.attrs.get("reused") else 0


class GenerationSearcher(Searcher):
    """A searcher written as one generator, :meth:`batches`: it yields a batch of asked trials and
    receives the same trials back, finished (values, state and attributes as the study holds them);
    it returns when the search is over."""

    def __init__(self, state: SearchState):
        super().__init__(state)
        self._steps: Batches | None = None
        self._asked: list[optuna.Trial] = []
        self.study.sampler = optuna.samplers.RandomSampler(seed=state.config.searcher.seed)  # every trial is enqueued

    def batches(self) -> Batches:
        raise NotImplementedError

    def ask(self, slots: int) -> list[optuna.Trial]:
        try:
            if self._steps is None:
                self._steps = self.batches()
                batch = next(self._steps)
            else:
                batch = self._steps.send(self.finished(self._asked))
            while not batch:  # nothing to score at this step: go on
                batch = self._steps.send([])
        except StopIteration:
            batch = []
        self._asked = batch
        return batch

    def finished(self, trials: list[optuna.Trial]) -> list[FrozenTrial]:
        """``trials`` as the study holds them now."""
        if not trials:
            return []
        by_number = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        return [by_number[t.number] for t in trials]
