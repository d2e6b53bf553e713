"""Allocation spaces: how the target sparsity is spread over the decoder blocks.

Parameters (prefix ``alloc.``), all allocations clipped to ``bounds`` (default [0, 0.99]) with
the parameter-weighted mean equal to the target (automl_prune.allocation.rules):

uniform  none: every layer at the target (the only allocation an N:M pattern allows).
owl      M (outlier threshold, x block mean, default [3, 10]), lambda (spread, [0.02, 0.2]);
         named point "owl": the paper's M = 5, lambda = 0.08.
alpha    eps (AlphaPruning spread, [0.05, 0.4]); named point "alphapruning": eps = 0.3 (its
         code's default).
offsets  offset.00 .. offset.<L-1> in [-delta, delta] (default delta 0.05; optional step, e.g.
         0.05 for OptiShear's {-0.05, 0, 0.05}), renormalised by a common shift; needs n_blocks
         (config) or ``bind(profile)``; named point "uniform" (all 0).
depth    a, b in [-span, span] (default 0.3): s_l = s + a (t - 1/2) + b (t^2 - 1/3), t = l/(L-1),
         renormalised; named point "uniform" (0, 0).
levels   level.<block>.<layer>: an integer level per prunable layer on a ladder around the base
         allocation (``base``: uniform, or OWL at fixed M / lambda), ``levels`` steps either side
         of ``step`` weights each (default EvoPress's); per-layer sparsities; the base prunes the
         target's total to less than one layer's rows (exact_extras: a row rounds down) and so does
         every level vector summing to zero (automl_prune.pruning.levels). Searched by ``searcher: evolution``
         (level-switch mutation) over a level database; needs bind(profile) and a fixed target;
         named point: the base ("uniform" or "owl"), every level 0.

Canonical keys: offsets differing by a constant are one allocation (the renormalising shift
absorbs it: clip(s + o + k + c') with c' = c - k); all-equal offsets and a = b = 0 are the uniform
allocation (the shift brings every block to s).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from optuna.distributions import IntDistribution
from pydantic import Field, field_validator

from automl_prune.allocation.rules import (
    DEFAULT_BOUNDS,
    alpha_sparsities,
    depth_sparsities,
    offset_sparsities,
    owl_sparsities,
)
from automl_prune.errors import UserError
from automl_prune.pruning.levels import LayerLadder, default_step, exact_extras, ladder
from automl_prune.pruning.methods import ALPHAPRUNING_SETTING, OWL_SETTING

from .parts import ANY, Part, PartConfig, Range, rounded


class AllocationConfig(PartConfig):
    bounds: Range = DEFAULT_BOUNDS

    # field validators (not model validators), so that the error names the field
    @field_validator("bounds")
    @classmethod
    def _bounds(cls, v: Range) -> Range:
        if not 0.0 <= v[0] <= v[1] < 1.0:
            raise ValueError(f"bounds must satisfy 0 <= low <= high < 1, got {list(v)}")
        return v


class AllocationPart(Part):
    """Decodes to a sparsity: the target itself (uniform) or a per-block list."""

    prefix = "alloc."
    uniform = False  # True only for the uniform allocation

    def __init__(self, config: AllocationConfig):
        super().__init__()
        self.config = config
        self.bounds = tuple(config.bounds)

    def allocate(self, params: dict, profile: Any, target: float) -> float | list[float]:
        raise NotImplementedError  # pragma: no cover

    def _profile(self, profile: Any, need: str) -> Any:
        if profile is None:
            raise ValueError(f"allocation {self.name!r} needs a ModelProfile (decode(params, profile))")
        if need == "owl" and not profile.has_owl:
            raise ValueError("allocation 'owl' needs a profile built with calibration statistics")
        if need == "alpha" and not profile.has_alphas:
            raise ValueError("allocation 'alpha' needs a profile built with with_alphas=True")
        return profile

    def _key(self, *parts: Any) -> list:
        return [self.name, *parts, [rounded(b) for b in self.bounds]]


class UniformConfig(AllocationConfig):
    name: Literal["uniform"] = "uniform"


class UniformSpace(AllocationPart):
    name = "uniform"
    uniform = True

    def allocate(self, params: dict, profile: Any, target: float) -> float:
        return float(target)

    def named_points(self) -> dict[str, dict]:
        return {"uniform": {}}

    def canonical(self, params: dict) -> Any:
        return "uniform"


class OWLConfig(AllocationConfig):
    name: Literal["owl"] = "owl"
    M: Range = (3.0, 10.0)
    lam: Range = Field((0.02, 0.2), alias="lambda")

    @field_validator("M")
    @classmethod
    def _positive_m(cls, v: Range) -> Range:
        if v[0] < 1:  # the profile keeps the outlier tail above 1 x the block mean (owl_floor)
            raise ValueError("M must be >= 1 (outliers are scores above M x the block mean)")
        return v

    @field_validator("lam")
    @classmethod
    def _nonnegative_lambda(cls, v: Range) -> Range:
        if v[0] < 0:
            raise ValueError("lambda must be >= 0")
        return v


class OWLSpace(AllocationPart):
    name = "owl"

    def __init__(self, config: OWLConfig):
        super().__init__(config)
        self.add_float("M", config.M)
        self.add_float("lambda", config.lam)

    def allocate(self, params: dict, profile: Any, target: float) -> list[float]:
        prof = self._profile(profile, "owl")
        ratios = prof.outlier_ratios(float(self.value(params, "M")))
        return owl_sparsities(ratios, prof.block_params, target, float(self.value(params, "lambda")), bounds=self.bounds)

    def named_points(self) -> dict[str, dict]:
        """OWL's own point (M 5, lambda 0.08), and uniform (lambda 0) when the lambda range holds it."""
        out = {}
        for label, point in (("owl", dict(OWL_SETTING)), ("uniform", {"M": ANY, "lambda": 0.0})):
            p = self.representable(point)
            if p is not None:
                out[label] = p
        return out

    def canonical(self, params: dict) -> Any:
        lam = rounded(self.value(params, "lambda"))
        if lam == 0.0:  # no spread: every block at the target, whatever M
            return "uniform"
        return self._key(rounded(self.value(params, "M")), lam)


class AlphaConfig(AllocationConfig):
    name: Literal["alpha"] = "alpha"
    eps: Range = (0.05, 0.4)

    @field_validator("eps")
    @classmethod
    def _eps(cls, v: Range) -> Range:
        if not 0.0 <= v[0] <= v[1] < 1.0:
            raise ValueError("eps must lie in [0, 1)")
        return v


class AlphaSpace(AllocationPart):
    name = "alpha"

    def __init__(self, config: AlphaConfig):
        super().__init__(config)
        self.add_float("eps", config.eps)

    def allocate(self, params: dict, profile: Any, target: float) -> list[float]:
        prof = self._profile(profile, "alpha")
        return alpha_sparsities(prof.block_alphas(), prof.block_params, target, float(self.value(params, "eps")),
                                bounds=self.bounds)

    def named_points(self) -> dict[str, dict]:
        p = self.representable(dict(ALPHAPRUNING_SETTING))
        return {} if p is None else {"alphapruning": p}

    def canonical(self, params: dict) -> Any:
        return self._key(rounded(self.value(params, "eps")))


class OffsetsConfig(AllocationConfig):
    name: Literal["offsets"] = "offsets"
    delta: float = Field(0.05, gt=0.0, lt=1.0)
    step: float | None = Field(None, gt=0.0)
    n_blocks: int | None = Field(None, ge=1)

    @field_validator("step")
    @classmethod
    def _grid(cls, v: float | None, info) -> float | None:
        delta = info.data.get("delta")  # absent when delta itself failed validation
        if v is not None and delta is not None and abs(delta / v - round(delta / v)) > 1e-9:
            raise ValueError(f"delta ({delta}) must be a multiple of step ({v})")
        return v


class OffsetsSpace(AllocationPart):
    name = "offsets"

    def __init__(self, config: OffsetsConfig):
        super().__init__(config)
        self.n_blocks = config.n_blocks
        if self.n_blocks is not None:
            width = len(str(self.n_blocks - 1))
            self.keys = [f"offset.{b:0{width}d}" for b in range(self.n_blocks)]
            for key in self.keys:
                self.add_float(key, (-config.delta, config.delta), step=config.step)

    def bind(self, profile: Any) -> "OffsetsSpace":
        if self.n_blocks is not None:
            if self.n_blocks != profile.n_blocks:
                raise UserError(f"space.allocation.n_blocks is {self.n_blocks} but the model has {profile.n_blocks} blocks")
            return self
        return OffsetsSpace(self.config.model_copy(update={"n_blocks": profile.n_blocks}))

    def _need_blocks(self) -> None:
        if self.n_blocks is None:
            raise UserError("allocation 'offsets' needs the number of blocks: set space.allocation.n_blocks "
                            "or bind the space to the model's profile (space.bind(profile))")

    def distributions(self):
        self._need_blocks()
        return super().distributions()

    def offsets(self, params: dict) -> np.ndarray:
        self._need_blocks()
        return np.array([float(self.value(params, k)) for k in self.keys])

    def allocate(self, params: dict, profile: Any, target: float) -> float | list[float]:
        prof = self._profile(profile, "layout")
        if prof.n_blocks != self.n_blocks:
            raise UserError(f"the offsets space has {self.n_blocks} blocks but the model has {prof.n_blocks}")
        o = self.offsets(params)
        if np.all(o == o[0]):
            return float(target)
        return offset_sparsities(o, prof.block_params, target, bounds=self.bounds)

    def named_points(self) -> dict[str, dict]:
        self._need_blocks()
        p = self.representable({k: 0.0 for k in self.keys})
        return {} if p is None else {"uniform": p}

    def canonical(self, params: dict) -> Any:
        o = self.offsets(params)
        if np.all(o == o[0]):
            return "uniform"
        return self._key([rounded(x) for x in o - o.min()])


class DepthConfig(AllocationConfig):
    name: Literal["depth"] = "depth"
    span: float = Field(0.3, gt=0.0, lt=2.0)


class DepthSpace(AllocationPart):
    name = "depth"

    def __init__(self, config: DepthConfig):
        super().__init__(config)
        self.add_float("a", (-config.span, config.span))
        self.add_float("b", (-config.span, config.span))

    def allocate(self, params: dict, profile: Any, target: float) -> float | list[float]:
        a, b = float(self.value(params, "a")), float(self.value(params, "b"))
        if a == 0 and b == 0:
            return float(target)
        prof = self._profile(profile, "layout")
        return depth_sparsities(a, b, prof.block_params, target, bounds=self.bounds)

    def named_points(self) -> dict[str, dict]:
        p = self.representable({"a": 0.0, "b": 0.0})
        return {} if p is None else {"uniform": p}

    def canonical(self, params: dict) -> Any:
        a, b = float(self.value(params, "a")), float(self.value(params, "b"))
        return "uniform" if a == 0 and b == 0 else self._key(rounded(a), rounded(b))


class LevelsConfig(AllocationConfig):
    name: Literal["levels"] = "levels"
    levels: int = Field(8, ge=1, le=64)
    step: int | None = Field(None, ge=1)  # weights per level (default: EvoPress's, whole rows)
    base: Literal["uniform", "owl"] = "uniform"
    M: float = Field(5.0, ge=1.0)
    lam: float = Field(0.08, ge=0.0, alias="lambda")
    group: Literal["row", "matrix"] = "row"  # the metric's comparison group (row: Wanda, BaWA, ...)


class LevelsSpace(AllocationPart):
    """Per-layer levels; ``bind(profile)`` (after ``set_target``) builds the ladders."""

    name = "levels"

    def __init__(self, config: LevelsConfig, target: float | None = None, ladders: dict[str, LayerLadder] | None = None,
                 step: int | None = None, base: list[float] | None = None):
        super().__init__(config)
        self.target, self.ladders, self.step, self.base = target, ladders, step, base
        for name, lad in (ladders or {}).items():
            self.dists[self.prefix + "level." + name] = IntDistribution(lad.low, lad.high)

    @property
    def base_label(self) -> str:
        return "owl" if self.config.base == "owl" else "uniform"

    def set_target(self, target: float) -> None:
        self.target = float(target)

    def bind(self, profile: Any) -> "LevelsSpace":
        if self.ladders is not None:
            return self
        if self.target is None:  # pragma: no cover - ComposedSpace sets it
            raise UserError("allocation 'levels' needs a fixed target sparsity")
        if not profile.layer_shapes:
            raise UserError("allocation 'levels' needs a profile with layer shapes (ModelProfile.build)")
        c = self.config
        if c.base == "owl":
            base = owl_sparsities(self._profile(profile, "owl").outlier_ratios(c.M), profile.block_params, self.target,
                                  c.lam, bounds=self.bounds)
        else:
            base = [self.target] * profile.n_blocks
        shapes = [s for block in profile.layer_shapes for s in block]
        step = c.step or default_step(shapes, self.target, c.levels, c.group)
        width = len(str(profile.n_blocks - 1))
        layers = [(f"{b:0{width}d}.{name}", rows, cols, float(base[b]))
                  for b, (names, block_shapes) in enumerate(zip(profile.layer_names, profile.layer_shapes))
                  for name, (rows, cols) in zip(names, block_shapes)]
        extras = exact_extras([(rows, cols, s) for _, rows, cols, s in layers], c.group)
        ladders = {}
        try:
            for (key, rows, cols, s), extra in zip(layers, extras):
                ladders[key] = ladder(rows, cols, s, step, c.levels, c.group, extra)
        except ValueError as exc:
            raise UserError(f"invalid space config: field 'space.allocation.step': {exc}") from None
        return LevelsSpace(c, self.target, ladders, step, [float(x) for x in base])

    def _need_ladders(self) -> dict[str, LayerLadder]:
        if self.ladders is None:
            raise UserError("allocation 'levels' needs the model's layers: bind the space to the profile (space.bind(profile))")
        return self.ladders

    def distributions(self):
        self._need_ladders()
        return super().distributions()

    def levels_of(self, params: dict) -> dict[str, int]:
        return {name: int(params[self.prefix + "level." + name]) for name in self._need_ladders()}

    def allocate(self, params: dict, profile: Any, target: float) -> dict[str, float]:
        """Per-layer sparsities, keyed ``<block>.<layer>`` with the block without padding (plan form)."""
        out = {}
        for name, lv in self.levels_of(params).items():
            block, layer = name.split(".", 1)
            out[f"{int(block)}.{layer}"] = self.ladders[name].sparsity_at(lv)
        return out

    def named_points(self) -> dict[str, dict]:
        return {self.base_label: {self.prefix + "level." + n: 0 for n in self._need_ladders()}}

    def canonical(self, params: dict) -> Any:
        lv = list(self.levels_of(params).values())
        return self.base_label if not any(lv) else self._key(self.config.base, self.step, lv)


ALLOCATION_SPACES: dict[str, tuple[type[AllocationConfig], type[AllocationPart]]] = {
    "uniform": (UniformConfig, UniformSpace),
    "owl": (OWLConfig, OWLSpace),
    "alpha": (AlphaConfig, AlphaSpace),
    "offsets": (OffsetsConfig, OffsetsSpace),
    "depth": (DepthConfig, DepthSpace),
    "levels": (LevelsConfig, LevelsSpace),
}
