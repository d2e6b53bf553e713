"""pymoo NSGA-III in ask/tell mode. Every candidate pymoo proposes is recorded as a trial of the
Optuna study (same storage, same reports), with its generation, its index in the generation's
population and its point in the unit box (user attribute ``pymoo``). A re-run resumes by replaying
the algorithm from the study: the same seed asks the same points, the stored ones are told their
stored values without being scored again, and the search goes on where it stopped. No algorithm
state is kept in a file (nothing in the output folder is unpickled). Each generation is evaluated
as one batch: in this process by default, or by a pool of Ray actors (``evaluate=``, see
ray_executor)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.problem import Problem
from pymoo.util.ref_dirs import get_reference_directions

from search_spaces import from_vector, vector_bounds

from .driver import FINISHED, SearchState, _bar, _tick, directions_of, sign_of, tell_outcome
from .evaluate import Outcome, evaluate_params
from .storage import STALE

log = logging.getLogger(__name__)
PENALTY = 1e12  # objective value given to a failed candidate (pymoo minimises)
ATTR = "pymoo"  # a trial's generation, index in the population and unit-box point


def _problem_and_algorithm(state: SearchState):
    lo, hi = vector_bounds(state.space)
    n_obj = state.n_objectives
    problem = Problem(n_var=len(lo), n_obj=n_obj, xl=np.asarray(lo, float), xu=np.asarray(hi, float))
    pop = state.config.searcher.population
    partitions = max(1, pop - 1) if n_obj <= 2 else max(1, round(pop ** (1 / (n_obj - 1))))
    ref_dirs = get_reference_directions("das-dennis", n_obj, n_partitions=partitions)
    algorithm = NSGA3(ref_dirs=ref_dirs, pop_size=pop)
    trials = state.config.budget.trials or 10**6
    algorithm.setup(problem, termination=("n_gen", max(1, math.ceil(trials / pop))), seed=state.config.searcher.seed)
    return algorithm


def evaluate_here(state: SearchState) -> Callable[[list[dict]], list[Outcome]]:
    def evaluate(params_list: list[dict]) -> list[Outcome]:
        return [evaluate_params(p, space=state.space, profile=state.profile, ctx=state.ctx, objectives=state.objectives,
                                memo=state.memo) for p in params_list]

    return evaluate


def stored_individuals(study) -> dict[tuple[int, int], FrozenTrial]:
    """The finished trials pymoo proposed, by (generation, index in the generation's population);
    a trial failed as stale (its driver was killed) is left out, so its candidate is scored again."""
    out = {}
    for t in study.get_trials(deepcopy=False, states=FINISHED):
        where = t.user_attrs.get(ATTR)
        if where is None or t.user_attrs.get("error") == STALE:
            continue
        key = (int(where["generation"]), int(where["index"]))
        if key not in out or out[key].state != TrialState.COMPLETE:
            out[key] = t
    return out


def pymoo_loop(state: SearchState, out: Path, progress: bool = True,
               evaluate: Callable[[list[dict]], list[Outcome]] | None = None) -> None:
    evaluate = evaluate or evaluate_here(state)
    if (out / "pymoo.pkl").exists():
        log.info("pymoo: %s is no longer read; the algorithm is rebuilt from the study", out / "pymoo.pkl")
    algorithm = _problem_and_algorithm(state)
    signs = np.array([sign_of(d) for d in directions_of(state.config, state.objectives)])
    dists = state.space.distributions()
    bar = _bar(state, progress)

    def run(trials: list) -> list[Outcome]:
        outcomes = evaluate([t.params for t in trials])
        for trial, outcome in zip(trials, outcomes):
            tell_outcome(state.study, trial, outcome)
            state.new_trials += 1
            _tick(bar, state)
        return outcomes

    def objective_row(values: list[float] | None) -> np.ndarray:
        return signs * np.asarray(values) if values is not None else np.full(len(signs), PENALTY)

    try:
        # the trials queued in the study first: the named points, and candidates of a killed run
        # queued again (each pymoo candidate below is the trial asked right after it is queued)
        waiting = state.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            run([state.study.ask(dists) for _ in waiting])
        stored = stored_individuals(state.study)
        generation = 0
        while algorithm.has_next():
            pop = algorithm.ask()
            X = pop.get("X")
            have = {i: stored[(generation, i)] for i in range(len(X)) if (generation, i) in stored}
            if len(have) < len(X) and not state.budget_left():
                break
            for i, t in have.items():  # replayed from the study: the same seed asks the same points
                X[i] = np.asarray(t.user_attrs[ATTR]["x"], float)
            trials, rows = [], {i: objective_row(t.values if t.state == TrialState.COMPLETE else None) for i, t in have.items()}
            new = [i for i in range(len(X)) if i not in have]
            for i in new:
                attrs = {ATTR: {"generation": generation, "index": i, "x": [float(v) for v in X[i]]}}
                state.study.enqueue_trial(from_vector(state.space, X[i]), user_attrs=attrs, skip_if_exists=False)
                trials.append(state.study.ask(dists))
            for i, outcome in zip(new, run(trials)):
                rows[i] = objective_row(outcome.values if outcome.state == "complete" else None)
            pop.set("X", X)
            pop.set("F", np.asarray([rows[i] for i in range(len(X))], float))
            algorithm.tell(infills=pop)
            generation += 1
    finally:
        if bar is not None:
            bar.close()
