"""Every searcher by its config's name: the one place a searcher is chosen."""

from __future__ import annotations

import optuna

from ..study.state import SearchState
from .base import OptunaSearcher, Searcher
from .evolution import EvolutionSearcher
from .pymoo_searcher import PymooSearcher


def _tpe(config):
    return lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=config.n_startup_trials)


def _nsga3(config):
    return lambda seed: optuna.samplers.NSGAIIISampler(population_size=config.population, seed=seed)


def _random(config):
    return lambda seed: optuna.samplers.RandomSampler(seed=seed)


SEARCHERS = {
    "tpe": lambda state: OptunaSearcher(state, _tpe(state.config.searcher)),
    "nsga3": lambda state: OptunaSearcher(state, _nsga3(state.config.searcher)),
    "random": lambda state: OptunaSearcher(state, _random(state.config.searcher)),
    "pymoo-nsga3": PymooSearcher,
    "evolution": EvolutionSearcher,
}


def make_searcher(state: SearchState) -> Searcher:
    """The searcher of ``state.config.searcher`` over ``state.study``: built when the study is
    opened for this run (the named points are enqueued into a new study then)."""
    return SEARCHERS[state.config.searcher.name](state)
