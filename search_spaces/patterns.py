"""Pattern spaces: the sparsity pattern and the global target.

unstructured  fixed target ``sparsity`` (default 0.5); no parameter.
sparsity      ``pattern.sparsity`` in [low, high] (default [0.3, 0.8]; optional step): the target
              as a decision variable, for sparsity-vs-error fronts; named points at ``points``
              (default low, middle, high).
nm            a fixed N:M pattern (``pattern: "2:4"``); its sparsity is 1 - N/M; the allocation
              must be uniform.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from automl_prune.errors import UserError
from automl_prune.pruning.masks import parse_pattern

from .parts import Part, PartConfig, rounded


class PatternPart(Part):
    prefix = "pattern."
    nm: tuple[int, int] | None = None

    @property
    def pattern(self) -> str:
        return "unstructured" if self.nm is None else f"{self.nm[0]}:{self.nm[1]}"

    def target(self, params: dict) -> float:
        raise NotImplementedError  # pragma: no cover

    def target_range(self) -> tuple[float, float]:
        raise NotImplementedError  # pragma: no cover


class UnstructuredConfig(PartConfig):
    name: Literal["unstructured"] = "unstructured"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0)


class UnstructuredSpace(PatternPart):
    name = "unstructured"

    def __init__(self, config: UnstructuredConfig):
        super().__init__()
        self.sparsity = float(config.sparsity)

    def target(self, params: dict) -> float:
        return self.sparsity

    def target_range(self) -> tuple[float, float]:
        return self.sparsity, self.sparsity

    def named_points(self) -> dict[str, dict]:
        return {"": {}}

    def canonical(self, params: dict) -> Any:
        return ["unstructured", rounded(self.sparsity)]


class SparsityConfig(PartConfig):
    name: Literal["sparsity"] = "sparsity"
    low: float = Field(0.3, ge=0.0, lt=1.0)
    high: float = Field(0.8, ge=0.0, lt=1.0)
    step: float | None = Field(None, gt=0.0)
    points: list[float] | None = None

    @field_validator("high")
    @classmethod
    def _order(cls, v: float, info) -> float:
        low = info.data.get("low")  # absent when low itself failed validation
        if low is not None and not low < v:
            raise ValueError(f"need low < high, got low={low}, high={v}")
        return v

    @field_validator("points")
    @classmethod
    def _points(cls, v: list[float] | None) -> list[float] | None:
        if v is not None and any(not 0.0 <= p < 1.0 for p in v):
            raise ValueError("points must lie in [0, 1)")
        return v


class SparsitySpace(PatternPart):
    name = "sparsity"

    def __init__(self, config: SparsityConfig):
        super().__init__()
        self.config = config
        self.add_float("sparsity", (config.low, config.high), step=config.step)
        # with a step, Optuna lowers high to the last grid point: the default points (low, middle,
        # high) are taken on the distribution's grid, so that each is a valid parameter value
        d = self.dists["pattern.sparsity"]
        mid = 0.5 * (d.low + d.high)
        if d.step is not None:
            mid = d.low + round((mid - d.low) / d.step) * d.step
        self.points = config.points if config.points is not None else [d.low, round(mid, 12), d.high]

    def target(self, params: dict) -> float:
        return float(self.value(params, "sparsity"))

    def target_range(self) -> tuple[float, float]:
        return self.config.low, self.config.high

    def named_points(self) -> dict[str, dict]:
        out = {}
        for s in self.points:
            p = self.representable({"sparsity": float(s)})
            if p is not None:
                out[f"s={s:g}"] = p
        return out

    def canonical(self, params: dict) -> Any:
        return ["unstructured", rounded(self.target(params))]


class NMConfig(PartConfig):
    name: Literal["nm"] = "nm"
    pattern: str = "2:4"

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            n, m = parse_pattern(v)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        return f"{n}:{m}"


class NMSpace(PatternPart):
    name = "nm"

    def __init__(self, config: NMConfig):
        super().__init__()
        self.nm = parse_pattern(config.pattern)

    def target(self, params: dict) -> float:
        return 1.0 - self.nm[0] / self.nm[1]

    def target_range(self) -> tuple[float, float]:
        s = self.target({})
        return s, s

    def named_points(self) -> dict[str, dict]:
        return {"": {}}

    def canonical(self, params: dict) -> Any:
        return ["nm", self.pattern]


PATTERN_SPACES: dict[str, tuple[type[PartConfig], type[PatternPart]]] = {
    "unstructured": (UnstructuredConfig, UnstructuredSpace),
    "sparsity": (SparsityConfig, SparsitySpace),
    "nm": (NMConfig, NMSpace),
}
