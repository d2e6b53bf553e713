"""The objective contract and the registry that finds objectives by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Literal

from automl_prune.candidate_context import CandidateContext
from automl_prune.errors import UserError
from automl_prune.pruning.apply import PruneResult

Direction = Literal["minimize", "maximize"]
#: ``report(partial_value, step) -> stop``: lets a block-sequential objective be stopped early
Reporter = Callable[[float, int], bool]


class TrialStopped(Exception):
    """Raised by an objective when its reporter asked to stop (an Optuna pruner said so)."""


class Objective(ABC):
    """Scores the plan currently applied to ``ctx.model``.

    Contract: ``prepare(ctx)`` computes once whatever is shared by all candidates (dense outputs,
    reference values) and keeps it in ``ctx.memo``; ``__call__(ctx, result)`` scores the pruned
    model as it is now (after ``ctx.apply(plan)`` returned ``result``) and returns a float.
    It never changes the weights. Constructors take keyword-only parameters, validated eagerly.
    """

    name: str = ""
    direction: Direction = "minimize"

    def prepare(self, ctx: CandidateContext) -> None:  # noqa: B027 - optional hook
        """Compute what every candidate shares (default: nothing)."""

    def not_streamable(self) -> str | None:
        """Why it cannot score a model streamed block by block (offload: cpu | disk), or None when
        it can (default). The study config refuses an offloaded study with such an objective."""
        return None

    def backward_windows(self) -> int:
        """Probe windows it runs a backward pass on, once per context (the memory model counts
        them; default none)."""
        return 0

    def probe_windows_read(self) -> int | None:
        """How many probe windows it reads, when it is told (None: all there are, or none)."""
        return None

    @abstractmethod
    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        """The objective value of the pruned model."""


_REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make an objective available by its ``name``."""
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    return sorted(_REGISTRY)


def make_objective(name: str, **params) -> Objective:
    """An objective by name; unknown names and bad parameters are user errors naming the field."""
    if name not in _REGISTRY:
        raise UserError(f"unknown objective {name!r}; choose one of {', '.join(available())}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as exc:
        raise UserError(f"objective {name!r}: {exc}") from None
