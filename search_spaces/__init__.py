"""Declarative search spaces: parameters <-> pruning plans.

``make_space(config)`` builds a static space (metric x allocation x pattern); see
:mod:`search_spaces.base` for the contract the searchers rely on, :mod:`search_spaces.canonical`
for the canonical keys, and :class:`automl_prune.allocation.ModelProfile` for the per-model facts
allocations read.
"""

from automl_prune.allocation.profile import ModelProfile

from .base import SearchSpace, check_params, from_vector, suggest, to_vector, vector_bounds
from .canonical import metric_form, metric_key
from .composite import DEFAULT_CONFIG, ComposedSpace, make_space

__all__ = [
    "DEFAULT_CONFIG",
    "ComposedSpace",
    "ModelProfile",
    "SearchSpace",
    "check_params",
    "from_vector",
    "make_space",
    "metric_form",
    "metric_key",
    "suggest",
    "to_vector",
    "vector_bounds",
]
