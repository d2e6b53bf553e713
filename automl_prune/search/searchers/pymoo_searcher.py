"""pymoo NSGA-III in ask/tell mode. Every candidate pymoo proposes is recorded as a trial of the
Optuna study (same storage, same reports), with its generation, its index in the generation's
population and its point in the unit box (user attribute ``pymoo``). A re-run resumes by replaying
the algorithm from the study: the same seed asks the same points, the stored ones are told their
stored values without being scored again, and the search goes on where it stopped. No algorithm
state is kept in a file (nothing in the output folder is unpickled). Each generation is one batch
of the search loop: scored in this process, or by the Ray workers (evaluators.py, ray_executor.py)."""

from __future__ import annotations

import logging
import math

import numpy as np
from optuna.trial import FrozenTrial, TrialState
from pymoo.algorithms.moo.nsga3 import NSGA3
from pymoo.core.problem import Problem
from pymoo.util.ref_dirs import get_reference_directions

from search_spaces import from_vector, vector_bounds

from ..study.definition import sign_of
from ..study.state import FINISHED, SearchState
from ..study.storage import STALE
from .base import Batches, GenerationSearcher

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


class PymooSearcher(GenerationSearcher):
    """A generation per batch; the generations already in the study are replayed, not scored."""

    def batches(self) -> Batches:
        state, study = self.state, self.study
        algorithm = _problem_and_algorithm(state)
        signs = np.array([sign_of(d) for d in state.directions])

        def objective_row(t: FrozenTrial | None) -> np.ndarray:
            ok = t is not None and t.state == TrialState.COMPLETE
            return signs * np.asarray(t.values) if ok else np.full(len(signs), PENALTY)

        # the trials queued in the study first: the named points, and candidates of a killed run
        # queued again (each pymoo candidate below is the trial asked right after it is queued)
        yield [study.ask(self.dists) for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]
        stored = stored_individuals(study)
        generation = 0
        while algorithm.has_next():
            pop = algorithm.ask()
            X = pop.get("X")
            have = {i: stored[(generation, i)] for i in range(len(X)) if (generation, i) in stored}
            if len(have) < len(X) and not state.budget_left():
                break
            for i, t in have.items():  # replayed from the study: the same seed asks the same points
                X[i] = np.asarray(t.user_attrs[ATTR]["x"], float)
            rows = {i: objective_row(t) for i, t in have.items()}
            new = [i for i in range(len(X)) if i not in have]
            asked = [self.queued(from_vector(state.space, X[i]),
                                 {ATTR: {"generation": generation, "index": i, "x": [float(v) for v in X[i]]}}) for i in new]
            finished = yield asked
            for i, t in zip(new, finished):
                rows[i] = objective_row(t)
            pop.set("X", X)
            pop.set("F", np.asarray([rows[i] for i in range(len(X))], float))
            algorithm.tell(infills=pop)
            generation += 1
