"""The search-space contract shared by every searcher (Optuna TPE / NSGA-III, pymoo, random).

A search space is *static*: every parameter is always present (no conditional parameters), so one
flat ``{name: value}`` dict describes a candidate for Optuna and for pymoo alike. Inactive
parameters (say ``metric.clip_q`` while ``metric.clip`` is False) are still sampled; ``decode``
ignores them and ``canonical_key`` drops them.

Contract (``SearchSpace``)::

    space.name: str
    space.distributions() -> dict[str, optuna.distributions.BaseDistribution]
        FloatDistribution / IntDistribution / CategoricalDistribution (choices: str, float, int,
        bool or None). The dict order is the order of the pymoo vector.
    space.decode(params, profile) -> PruningPlan
        params: {name: value} as in ``trial.params`` (every name of distributions(), no other);
        profile: the ModelProfile (may be None when no part needs one: uniform allocation).
        Raises ValueError on missing/unknown names, UserError on a model mismatch.
    space.named_points() -> dict[str, dict]
        The known methods that the space can represent, as params dicts, each decodable and
        accepted by ``study.enqueue_trial`` (values inside the distributions); {} if none.
    space.canonical_key(params) -> str
        Equal keys => identical masks on every model (up to float rounding of near-ties and the
        6-significant-digit rounding of floats in the key); see search_spaces/canonical.py.
    space.bind(profile) -> SearchSpace
        Optional: a space whose parameters depend on the model (``offsets`` without n_blocks)
        must be bound before distributions() is called; every other space returns itself.

Module functions::

    suggest(space, trial) -> dict          # trial.suggest_* for each distribution; returns params
    to_vector(space, params) -> np.ndarray # for pymoo: a point of the unit box [0, 1]^d
    from_vector(space, x) -> dict          # inverse (x clipped to the box first)
    vector_bounds(space) -> (xl, xu)       # zeros and ones of length d

Vector encoding, per distribution in dict order: floats ``(v - low) / (high - low)`` (in log space
when ``log=True``; snapped to ``step`` on the way back); ints likewise, rounded on the way back;
categoricals ``(index + 0.5) / n_choices``, decoded as ``floor(x * n)`` (each choice owns an
equal sub-interval). ``from_vector(to_vector(p)) == p`` exactly for categoricals and ints, to
float rounding for floats.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from automl_prune.allocation.profile import ModelProfile
from automl_prune.pruning.plan import PruningPlan


class SearchSpace(ABC):
    """A static space of pruning plans. See the module docstring for the contract."""

    name: str = ""

    @abstractmethod
    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter with its Optuna distribution (stable order)."""

    @abstractmethod
    def decode(self, params: dict, profile: "ModelProfile | None" = None) -> "PruningPlan":
        """The pruning plan of a parameter set."""

    @abstractmethod
    def named_points(self) -> dict[str, dict]:
        """Known methods as parameter sets (name -> params)."""

    @abstractmethod
    def canonical_key(self, params: dict) -> str:
        """A string equal for parameter sets that give identical masks."""

    def bind(self, profile: "ModelProfile") -> "SearchSpace":
        """This space with model-dependent parameters fixed (default: itself)."""
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


# ----- Optuna -----------------------------------------------------------------------------------
def suggest(space: SearchSpace, trial: Any) -> dict:
    """Ask ``trial`` (an optuna Trial) for every parameter of ``space``; returns the params dict.
    Parameters enqueued with ``study.enqueue_trial(point)`` come back unchanged."""
    params: dict = {}
    for name, d in space.distributions().items():
        if isinstance(d, FloatDistribution):
            params[name] = trial.suggest_float(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, IntDistribution):
            params[name] = trial.suggest_int(name, d.low, d.high, log=d.log, step=d.step)
        elif isinstance(d, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, d.choices)
        else:  # pragma: no cover - spaces only build the three kinds above
            raise TypeError(f"unsupported distribution for {name!r}: {d!r}")
    return params


def check_params(space: SearchSpace, params: dict) -> None:
    """ValueError unless ``params`` has exactly the space's names, each inside its distribution."""
    dists = space.distributions()
    missing = [n for n in dists if n not in params]
    unknown = [n for n in params if n not in dists]
    if missing or unknown:
        raise ValueError(f"parameters do not match space {space.name}: missing {missing}, unknown {unknown}")
    for name, d in dists.items():
        v = params[name]
        try:
            ok = d._contains(d.to_internal_repr(v))
        except (ValueError, TypeError):
            ok = False
        if not ok or (isinstance(d, CategoricalDistribution) and not _same_choice(v, d.choices)):
            raise ValueError(f"parameter {name}={v!r} lies outside its distribution {d}")


def _same_choice(v: Any, choices: tuple) -> bool:
    """Choice membership that tells True from 1 and 0.0 from False."""
    return any(type(v) is type(c) and v == c for c in choices) or any(v is c for c in choices)


# ----- pymoo (unit box) ----------------------------------------------------------------------------
def _unit(d: BaseDistribution, v: Any) -> float:
    if isinstance(d, CategoricalDistribution):
        return (d.to_internal_repr(v) + 0.5) / len(d.choices)
    lo, hi, x = float(d.low), float(d.high), float(v)
    if d.log:
        lo, hi, x = math.log(lo), math.log(hi), math.log(x)
    return 0.5 if hi == lo else (x - lo) / (hi - lo)


def _from_unit(d: BaseDistribution, u: float) -> Any:
    u = min(max(float(u), 0.0), 1.0)
    if isinstance(d, CategoricalDistribution):
        return d.choices[min(int(u * len(d.choices)), len(d.choices) - 1)]
    lo, hi = float(d.low), float(d.high)
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if d.log else lo + u * (hi - lo)
    if isinstance(d, IntDistribution):
        k = round((x - d.low) / d.step)
        return int(min(max(d.low + k * d.step, d.low), d.high))
    if d.step is not None:
        x = d.low + round((x - d.low) / d.step) * d.step
    return float(min(max(x, lo), hi))


def to_vector(space: SearchSpace, params: dict) -> np.ndarray:
    """The point of the unit box [0, 1]^d that encodes ``params`` (d = number of parameters)."""
    return np.array([_unit(d, params[n]) for n, d in space.distributions().items()], dtype=np.float64)


def from_vector(space: SearchSpace, x: np.ndarray) -> dict:
    """The params dict encoded by ``x`` (clipped to the unit box)."""
    dists = space.distributions()
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size != len(dists):
        raise ValueError(f"vector has {x.size} entries but space {space.name} has {len(dists)} parameters")
    return {n: _from_unit(d, u) for (n, d), u in zip(dists.items(), x)}


def vector_bounds(space: SearchSpace) -> tuple[np.ndarray, np.ndarray]:
    """pymoo ``xl, xu`` of the unit box."""
    d = len(space.distributions())
    return np.zeros(d), np.ones(d)
