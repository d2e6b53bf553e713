"""Building blocks of composed spaces: a part owns the parameters under one prefix.

A space is metric x allocation x pattern; each part contributes prefixed parameters
(``metric.*``, ``alloc.*``, ``pattern.*``), named points and its share of the canonical key.
A parameter with a single possible value is *fixed*: it is not a distribution (so not in the
params dict) and decode reads it from the part.

Configs are pydantic models with ``extra="forbid"``; :func:`parse_config` turns validation
errors into a UserError naming the field (``space.metric.alpha``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterable

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from pydantic import BaseModel, ConfigDict, FiniteFloat, ValidationError, field_validator

from automl_prune.errors import UserError

#: a closed interval [low, high] of finite floats (inf/nan rejected: they make no distribution)
Range = tuple[FiniteFloat, FiniteFloat]


class _Any:
    """Named-point value of an inactive parameter: any value of its range will do."""

    def __repr__(self) -> str:
        return "ANY"


#: placeholder for an inactive parameter in a named point (becomes the float range's high end,
#: the int range's low end, or the first choice)
ANY = _Any()


class PartConfig(BaseModel):
    """Base of every part config: strict, with a ``name``."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _ranges(cls, v: Any, info) -> Any:
        field = cls.model_fields.get(info.field_name)
        if field is not None and field.annotation == Range and v[0] > v[1]:
            raise ValueError(f"range [{v[0]}, {v[1]}] has low > high")
        return v


def parse_config(cls: type[PartConfig], data: Any, where: str) -> PartConfig:
    """Validate ``data`` (a dict or a bare name) against ``cls``; UserError naming the field."""
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict):
        raise UserError(f"invalid space config: field '{where}': expected a mapping or a name, got {data!r}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise UserError(f"invalid space config: field '{where}{'.' + loc if loc else ''}': {err['msg']}") from None


class Part(ABC):
    """One factor of a composed space. Subclasses fill ``self.dists`` and ``self.fixed``."""

    prefix: str = ""
    name: str = ""

    def __init__(self) -> None:
        self.dists: dict[str, BaseDistribution] = {}
        self.fixed: dict[str, Any] = {}

    # ----- parameters -------------------------------------------------------------------------
    def add_float(self, key: str, rng: Range, *, step: float | None = None, log: bool = False) -> None:
        lo, hi = float(rng[0]), float(rng[1])
        if lo == hi:
            self.fixed[self.prefix + key] = lo
        else:
            self.dists[self.prefix + key] = FloatDistribution(lo, hi, step=step, log=log)

    def add_choice(self, key: str, choices: Iterable[Any]) -> None:
        choices = list(dict.fromkeys(choices))  # unique, in order
        if not choices:
            raise UserError(f"{self.prefix}{key}: no choices given")
        if len(choices) == 1:
            self.fixed[self.prefix + key] = choices[0]
        else:
            self.dists[self.prefix + key] = CategoricalDistribution(choices)

    def value(self, params: dict, key: str) -> Any:
        """The value of ``prefix + key``: from params, or the fixed value."""
        full = self.prefix + key
        if full in self.fixed:
            return self.fixed[full]
        return params[full]

    def distributions(self) -> dict[str, BaseDistribution]:
        return dict(self.dists)

    # ----- named points -----------------------------------------------------------------------
    def representable(self, point: dict[str, Any]) -> dict | None:
        """``point`` (keys without prefix, every parameter) as params, or None if some value is
        outside this part's ranges or differs from a fixed value."""
        out = {}
        for key, v in point.items():
            full = self.prefix + key
            if v is ANY:
                if full in self.dists:
                    d = self.dists[full]
                    out[full] = d.choices[0] if isinstance(d, CategoricalDistribution) else (
                        d.high if isinstance(d, FloatDistribution) else d.low)
                continue
            if full in self.fixed:
                if not _equal(self.fixed[full], v):
                    return None
            elif full in self.dists:
                d = self.dists[full]
                if isinstance(d, CategoricalDistribution):
                    if not any(_equal(c, v) for c in d.choices):
                        return None
                elif not _contains(d, v):  # inside [low, high] and, with a step, on the grid
                    return None
                out[full] = v
        missing = [n for n in self.dists if n not in out]
        if missing:  # pragma: no cover - a programming error in a part's point table
            raise AssertionError(f"named point misses {missing}")
        return out

    @abstractmethod
    def named_points(self) -> dict[str, dict]:
        """Label -> params of this part; the first is the part's default."""

    @abstractmethod
    def canonical(self, params: dict) -> Any:
        """JSON-able canonical form of this part's parameters."""

    def bind(self, profile: Any) -> "Part":
        return self


def _contains(d: BaseDistribution, v: Any) -> bool:
    """Whether Optuna accepts ``v`` for the numeric distribution ``d`` (range and step grid)."""
    try:
        return bool(d._contains(d.to_internal_repr(v)))
    except (ValueError, TypeError):
        return False


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    return a == b


def rounded(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits, -0.0 folded into 0.0 (for canonical keys)."""
    return float(f"{float(x):.{digits}g}") + 0.0
