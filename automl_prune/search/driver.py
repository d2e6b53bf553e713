"""The local search loop: an Optuna study driven by ask/tell, one candidate at a time.

The study lives in an Optuna storage (SQLite in the output folder by default), so re-running
the same command resumes it: the trial budget counts every finished trial of the study, and
values already measured are reused for candidates with the same canonical form or the same masks.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from ..candidate_context import CandidateContext
from ..errors import UserError
from ..progress import progress_bar
from .config import StudyConfig
from .evaluate import Memo, Outcome, evaluate_params
from .fingerprint import check_fingerprint
from .storage import STALE, heartbeat, open_storage, storage_url, study_name
from .storage import where as study_where

log = logging.getLogger(__name__)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass
class SearchState:
    """What the loop shares with its searchers: space, objectives, memo of measured values."""

    config: StudyConfig
    study: optuna.Study
    space: object
    profile: object
    objectives: list
    ctx: CandidateContext
    memo: Memo = field(default_factory=Memo)
    started: float = field(default_factory=time.perf_counter)
    new_trials: int = 0
    database_seconds: float | None = None  # the level database's build (evolution), outside budget.timeout

    @property
    def n_objectives(self) -> int:
        return len(self.objectives)

    def finished(self) -> int:
        return sum(t.state in FINISHED for t in self.study.get_trials(deepcopy=False))

    def spent(self) -> int:
        """The trials that count against the budget: the finished ones, less those that reused the
        value of an equal candidate measured before (a repeat never costs a budget slot) and those
        failed as stale (their driver was killed; the retry counts instead)."""
        return sum(t.state in FINISHED and not t.user_attrs.get("reused") and t.user_attrs.get("error") != STALE
                   for t in self.study.get_trials(deepcopy=False))

    def budget_left(self) -> bool:
        b = self.config.budget
        if b.trials is not None and self.spent() >= b.trials:
            return False
        return b.timeout is None or time.perf_counter() - self.started < b.timeout


class NSGA3Sampler(optuna.samplers.NSGAIIISampler):
    """Optuna's NSGA-III sampler, picklable: since Optuna 5.1 its generation cache holds a
    ``threading.Lock``, which Ray Tune cannot pickle with the Tuner's state. A copy gets a new lock
    (the cache it guards is rebuilt from the study on first use)."""

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def sampler_seed(seed: int | None, trials_so_far: int) -> int | None:
    """The sampler's seed for a run that starts with ``trials_so_far`` trials in the study: the
    configured seed for a new study; for a resumed one a seed drawn from (seed, trials so far), so
    the resumed sampler does not replay the proposals of the first run (a seeded random start-up
    would otherwise propose the same candidates again)."""
    if seed is None or trials_so_far == 0:
        return seed
    return int(hashlib.sha256(f"{seed}:{trials_so_far}".encode()).hexdigest()[:8], 16)


def make_sampler(config: StudyConfig, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    s = config.searcher
    seed = sampler_seed(s.seed, trials_so_far)
    if s.name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials)
    if s.name == "nsga3":
        return NSGA3Sampler(population_size=s.population, seed=seed)
    # random, and pymoo-nsga3 (pymoo proposes every candidate; the study only records them)
    return optuna.samplers.RandomSampler(seed=seed)


def directions_of(config: StudyConfig, objectives: list) -> list[str]:
    return [c.direction or o.direction for c, o in zip(config.objectives, objectives)]


def sign_of(direction) -> float:
    """+1 for a minimised objective, -1 for a maximised one (a direction name or Optuna's
    StudyDirection): ``sign * value`` is smaller for the better candidate."""
    minimise = direction == "minimize" or direction == optuna.study.StudyDirection.MINIMIZE
    return 1.0 if minimise else -1.0


def first_sign(config: StudyConfig, objectives: list) -> float:
    """``sign_of`` the study's first objective (the one single-objective choices rank by)."""
    return sign_of(directions_of(config, objectives)[0])


def open_study(config: StudyConfig, out: Path, objectives: list) -> optuna.Study:
    """Create the study, or load it when it exists (resume): its objectives and its fingerprint
    (fingerprint.py) must match the config's. A resumed study's sampler is seeded from (seed,
    trials so far). Called by the driver that holds the study's lock (lock.py)."""
    url = storage_url(config, out)
    storage = open_storage(url)
    name = study_name(config)
    where = study_where(config, out)
    directions = directions_of(config, objectives)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2) if len(objectives) == 1 else optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=make_sampler(config),
                                    pruner=pruner, load_if_exists=True)
    except ValueError as exc:
        raise UserError(f"cannot open the study in {where}: {exc}") from None
    have = [d.name.lower() for d in study.directions]
    if have != directions:
        raise UserError(f"{where} has directions {have}, but the config asks for {directions}; "
                        "use another --out folder or study_name")
    names = [o.name for o in config.objectives]
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", names)
    elif stored != names:
        raise UserError(f"{where} was run with objectives {stored}, not {names}; use another --out folder or study_name")
    check_fingerprint(study, config, where)
    n = len(study.trials)
    if n:
        study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(config, n), pruner=pruner)
    return study


def remember_finished(study: optuna.Study, memo: Memo) -> None:
    """Fill the memo of measured values from the study's completed trials (resume)."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.user_attrs.get("canonical_key"):
            memo.by_key.setdefault(t.user_attrs["canonical_key"], list(t.values))
        if t.user_attrs.get("mask_hash"):
            memo.by_mask.setdefault(t.user_attrs["mask_hash"], list(t.values))


def _reporter(trial: optuna.Trial) -> Callable[[float, int], bool]:
    def report(value: float, step: int) -> bool:
        trial.report(value, step)
        return trial.should_prune()

    return report


STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


def tell_outcome(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    """Record an outcome in the study: user attributes first, then the values or the state."""
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    if outcome.state == "complete":
        study.tell(trial, outcome.values)
    else:
        study.tell(trial, state=STATES[outcome.state])


def evaluate_trial(state: SearchState, trial: optuna.Trial) -> Outcome:
    """Decode, score and tell one trial; a failing candidate fails its trial only."""
    report = _reporter(trial) if state.n_objectives == 1 else None
    state.new_trials += 1
    try:
        with heartbeat(state.study, trial):
            outcome = evaluate_params(trial.params, space=state.space, profile=state.profile, ctx=state.ctx,
                                      objectives=state.objectives, memo=state.memo, report=report)
    except KeyboardInterrupt:
        trial.set_user_attr("error", "interrupted")
        state.study.tell(trial, state=TrialState.FAIL)
        raise
    if outcome.state == "fail":
        log.warning("trial %d failed: %s", trial.number, outcome.attrs.get("error"))
    tell_outcome(state.study, trial, outcome)
    return outcome


MAX_REPEATS = 100  # proposals in a row equal to measured candidates: the sampler has run out of new ones


def optuna_loop(state: SearchState, progress: bool = True) -> None:
    """Ask/tell until the budget is spent (Optuna TPE, NSGA-III or random search). A proposal equal
    to a candidate already measured reuses its value and costs no budget; ``MAX_REPEATS`` of them
    in a row end the search (the space holds nothing new for this sampler)."""
    dists = state.space.distributions()
    bar = _bar(state, progress)
    repeats = 0
    try:
        while state.budget_left():
            trial = state.study.ask(dists)
            repeats = repeats + 1 if evaluate_trial(state, trial).attrs.get("reused") else 0
            if repeats >= MAX_REPEATS:
                log.info("search: the last %d proposals all repeated measured candidates; stopping", repeats)
                break
            _tick(bar, state)
    finally:
        if bar is not None:
            bar.close()


def _bar(state: SearchState, progress: bool):
    total = state.config.budget.trials
    bar = progress_bar(total=total, initial=state.spent(), desc="search", unit="trial", enabled=progress)
    return bar


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
