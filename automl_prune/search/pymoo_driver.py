"""pymoo NSGA-III in ask/tell mode. Every candidate pymoo proposes is recorded as a trial of the
Optuna study (same storage, same reports); the algorithm object is pickled after each generation
so that re-running the command resumes it. Each generation is evaluated as one batch: in this
process by default, or by a pool of Ray actors (``evaluate=``, see ray_executor)."""

from __future__ import annotations

import math
from pathlib import Path

import dill
import numpy as np
from optuna.trial import TrialState

from typing import Callable

from .driver import SearchState, _bar, _tick, directions_of, tell_outcome
from .evaluate import Outcome, evaluate_params

PENALTY = 1e12  # objective value given to a failed candidate (pymoo minimises)


def _problem_and_algorithm(state: SearchState):
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.core.problem import Problem
    from pymoo.util.ref_dirs import get_reference_directions

    from search_spaces import vector_bounds

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


def pymoo_loop(state: SearchState, out: Path, progress: bool = True,
               evaluate: Callable[[list[dict]], list[Outcome]] | None = None) -> None:
    from search_spaces import from_vector

    evaluate = evaluate or evaluate_here(state)
    checkpoint = out / "pymoo.pkl"
    algorithm = dill.loads(checkpoint.read_bytes()) if checkpoint.exists() else _problem_and_algorithm(state)
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions_of(state.config, state.objectives)])
    dists = state.space.distributions()
    bar = _bar(state, progress)

    def run(trials: list) -> list[Outcome]:
        outcomes = evaluate([t.params for t in trials])
        for trial, outcome in zip(trials, outcomes):
            tell_outcome(state.study, trial, outcome)
            state.new_trials += 1
            _tick(bar, state)
        return outcomes

    try:
        # the named points queued in the study first (so that each pymoo candidate below is the
        # trial asked right after it is queued)
        waiting = state.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if waiting:
            run([state.study.ask(dists) for _ in waiting])
        while algorithm.has_next() and state.budget_left():
            pop = algorithm.ask()
            trials = []
            for x in pop.get("X"):
                state.study.enqueue_trial(from_vector(state.space, x), skip_if_exists=False)
                trials.append(state.study.ask(dists))
            F = [signs * np.asarray(o.values) if o.values is not None else np.full(len(signs), PENALTY) for o in run(trials)]
            pop.set("F", np.asarray(F, float))
            algorithm.tell(infills=pop)
            checkpoint.write_bytes(dill.dumps(algorithm))
    finally:
        if bar is not None:
            bar.close()
