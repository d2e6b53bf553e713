"""Metric spaces: ``bawa``, ``optishear`` and their union ``generic``.

Parameters (prefix ``metric.``; a setting with one value is fixed and not a parameter):

bawa       form {sum, product}; alpha, beta (row/column-norm exponents, default [-1, 2]);
           gamma (activation exponent, [0, 2]); norm {l1, l2}; activation {l2, std, mean_abs}
           (rms may be added but equals l2, see canonical.py R1); clip {False, True} and clip_q
           (quantile of the activation statistic the outliers are clipped at, [0.9, 1.0]; ignored
           when clip is False); group {row, matrix} unless fixed.
optishear  f_w, f_x (7 transforms), c_w, c_x (7 coefficients); group (default fixed: row).
generic    family {bawa, optishear} plus both families' parameters and group; decode uses the
           active family only (the canonical key drops the other).

Decode returns the named metric spec when the parameters are exactly a named method's
(BaWA product(0, 0, 1, l2) -> WandaMetric, ...), so a seeded point reproduces that method's
scores bit for bit; the plan always carries its comparison group explicitly.
"""

from __future__ import annotations

from typing import Any, Literal

from automl_prune.metrics.spec import (
    COEFFICIENTS,
    TRANSFORMS,
    BaWAMetric,
    Coefficient,
    MagnitudeMetric,
    MetricSpec,
    OptiShearMetric,
    RIAMetric,
    StadeMetric,
    Transform,
    WandaMetric,
)
from pydantic import Field, field_validator

from .canonical import metric_form
from .parts import ANY, Part, PartConfig, Range, parse_config

GroupSetting = Literal["row", "matrix", "search"]


def _group_choices(setting: str) -> list[str]:
    return ["row", "matrix"] if setting == "search" else [setting]


class MetricPart(Part):
    """A metric part: decodes to (metric spec, comparison group)."""

    prefix = "metric."

    def _add_group(self, setting: str) -> None:
        self.add_choice("group", _group_choices(setting))

    def decode(self, params: dict) -> tuple[MetricSpec, str]:
        return self.decode_metric(params), self.value(params, "group")

    def decode_metric(self, params: dict) -> MetricSpec:  # pragma: no cover - overridden
        raise NotImplementedError

    def canonical(self, params: dict, *, nm: bool = False) -> Any:
        metric, group = self.decode(params)
        ranking = "nm" if nm else group
        return [ranking, list(metric_form(metric, ranking))]

    def _points(self, table: list[tuple[str, dict]]) -> dict[str, dict]:
        out = {}
        for label, point in table:
            if label in out:  # first representable point of a label wins
                continue
            params = self.representable(point)
            if params is not None:
                out[label] = params
        return out


# ----- BaWA ---------------------------------------------------------------------------------------
class BaWAConfig(PartConfig):
    name: Literal["bawa"] = "bawa"
    group: GroupSetting = "search"
    forms: list[Literal["sum", "product"]] = Field(["sum", "product"], min_length=1)
    alpha: Range = (-1.0, 2.0)
    beta: Range = (-1.0, 2.0)
    gamma: Range = (0.0, 2.0)
    norms: list[Literal["l1", "l2"]] = Field(["l1", "l2"], min_length=1)
    activations: list[Literal["l2", "std", "rms", "mean_abs"]] = Field(["l2", "std", "mean_abs"], min_length=1)
    clip: bool = True
    clip_quantile: Range = (0.9, 1.0)

    @field_validator("gamma")
    @classmethod
    def _gamma(cls, v: Range) -> Range:
        if v[0] < 0:
            raise ValueError("gamma must be >= 0")
        return v

    @field_validator("clip_quantile")
    @classmethod
    def _quantile(cls, v: Range) -> Range:
        if not 0.0 < v[0] <= v[1] <= 1.0:
            raise ValueError("clip_quantile must lie in (0, 1]")
        return v


def _bawa_point(form: str, alpha: float, beta: float, gamma: float, norm: str = "l2", act: str = "l2") -> dict:
    return dict(form=form, alpha=alpha, beta=beta, gamma=gamma, norm=norm, activation=act, clip=False, clip_q=ANY)


#: the named methods in the BaWA family, with their reference comparison groups
BAWA_POINTS: list[tuple[str, dict, str]] = [
    ("wanda", _bawa_point("product", 0.0, 0.0, 1.0), "row"),
    ("ria", _bawa_point("sum", 1.0, 1.0, 0.5, norm="l1"), "matrix"),
    ("stade", _bawa_point("product", 0.0, 0.0, 1.0, act="std"), "row"),
    ("magnitude", _bawa_point("product", 0.0, 0.0, 0.0), "matrix"),
    ("bawa", _bawa_point("sum", 1.0, 1.0, 0.5), "row"),  # BaWA defaults (methods.METHODS["bawa"])
]


class BaWASpace(MetricPart):
    name = "bawa"

    def __init__(self, config: BaWAConfig, *, with_group: bool = True):
        super().__init__()
        self.config = config
        self.add_choice("form", config.forms)
        self.add_float("alpha", config.alpha)
        self.add_float("beta", config.beta)
        self.add_float("gamma", config.gamma)
        self.add_choice("norm", config.norms)
        self.add_choice("activation", config.activations)
        self.add_choice("clip", [False, True] if config.clip else [False])
        self.add_float("clip_q", config.clip_quantile if config.clip else (1.0, 1.0))
        if with_group:
            self._add_group(config.group)

    def decode_metric(self, params: dict) -> MetricSpec:
        v = lambda k: self.value(params, k)  # noqa: E731
        q = float(v("clip_q")) if v("clip") else None
        spec = BaWAMetric(form=v("form"), alpha=float(v("alpha")), beta=float(v("beta")), gamma=float(v("gamma")),
                          norm=v("norm"), activation=v("activation"), clip_quantile=None if q is None or q >= 1.0 else q)
        return named_equivalent(spec)

    def metric_points(self) -> list[tuple[str, dict, str]]:
        return BAWA_POINTS

    def named_points(self) -> dict[str, dict]:
        return self._points([(label, {**p, "group": g}) for label, p, g in BAWA_POINTS])


def named_equivalent(spec: BaWAMetric) -> MetricSpec:
    """The named method whose kernel computes the same ranking as ``spec`` when the parameters
    are exactly that method's (see canonical.py R8), else ``spec``."""
    plain = spec.clip_quantile is None
    if spec.form == "product" and spec.alpha == 0 and spec.beta == 0:
        if spec.gamma == 0:
            return MagnitudeMetric()
        if spec.gamma == 1 and plain and spec.activation == "l2":
            return WandaMetric()
        if spec.gamma == 1 and plain and spec.activation == "std":
            return StadeMetric()
    if spec.form == "sum" and spec.alpha == 1 and spec.beta == 1 and spec.norm == "l1" and spec.activation == "l2" and plain:
        return RIAMetric(a=spec.gamma)
    return spec


# ----- OptiShear -----------------------------------------------------------------------------------
class OptiShearConfig(PartConfig):
    name: Literal["optishear"] = "optishear"
    group: GroupSetting = "row"
    f_w: list[Transform] = Field(list(TRANSFORMS), min_length=1)
    f_x: list[Transform] = Field(list(TRANSFORMS), min_length=1)
    c_w: list[Coefficient] = Field(list(COEFFICIENTS), min_length=1)
    c_x: list[Coefficient] = Field(list(COEFFICIENTS), min_length=1)


#: Wanda = |W| * sqrt(scaler_row), exactly Wanda's reference formula
OPTISHEAR_POINTS: list[tuple[str, dict, str]] = [
    ("wanda", dict(f_w="identity", f_x="identity", c_w="none", c_x="none"), "row"),
]


class OptiShearSpace(MetricPart):
    name = "optishear"

    def __init__(self, config: OptiShearConfig, *, with_group: bool = True):
        super().__init__()
        self.config = config
        for key in ("f_w", "f_x", "c_w", "c_x"):
            self.add_choice(key, getattr(config, key))
        if with_group:
            self._add_group(config.group)

    def decode_metric(self, params: dict) -> MetricSpec:
        spec = OptiShearMetric(**{k: self.value(params, k) for k in ("f_w", "f_x", "c_w", "c_x")})
        if (spec.f_w, spec.f_x, spec.c_w, spec.c_x) == ("identity", "identity", "none", "none"):
            return WandaMetric()
        return spec

    def metric_points(self) -> list[tuple[str, dict, str]]:
        return OPTISHEAR_POINTS

    def named_points(self) -> dict[str, dict]:
        return self._points([(label, {**p, "group": g}) for label, p, g in OPTISHEAR_POINTS])


# ----- generic (union) -------------------------------------------------------------------------------
class GenericConfig(PartConfig):
    name: Literal["generic"] = "generic"
    families: list[Literal["bawa", "optishear"]] = Field(["bawa", "optishear"], min_length=1)
    group: GroupSetting = "search"
    bawa: dict = {}
    optishear: dict = {}


class GenericSpace(MetricPart):
    """``metric.family`` picks the family; both families' parameters are always present."""

    name = "generic"

    def __init__(self, config: GenericConfig, *, where: str = "space.metric"):
        super().__init__()
        self.config = config
        self.families: dict[str, MetricPart] = {
            "bawa": BaWASpace(parse_config(BaWAConfig, {"name": "bawa", **config.bawa}, f"{where}.bawa"), with_group=False),
            "optishear": OptiShearSpace(
                parse_config(OptiShearConfig, {"name": "optishear", **config.optishear}, f"{where}.optishear"), with_group=False
            ),
        }
        self.add_choice("family", config.families)
        for fam in self.families.values():
            self.dists.update(fam.dists)
            self.fixed.update(fam.fixed)
        self._add_group(config.group)

    def decode_metric(self, params: dict) -> MetricSpec:
        return self.families[self.value(params, "family")].decode_metric(params)

    def named_points(self) -> dict[str, dict]:
        """Every family's points (the first family wins a shared label, e.g. wanda), with the
        inactive family's parameters as placeholders."""
        keys = {f: list(part.metric_points()[0][1]) for f, part in self.families.items()}
        table: list[tuple[str, dict]] = []
        for fam in self.config.families:
            for label, point, group in self.families[fam].metric_points():
                inactive = {k: ANY for f, ks in keys.items() if f != fam for k in ks}
                table.append((label, {"family": fam, "group": group, **point, **inactive}))
        return self._points(table)


METRIC_SPACES: dict[str, tuple[type[PartConfig], type[MetricPart]]] = {
    "bawa": (BaWAConfig, BaWASpace),
    "optishear": (OptiShearConfig, OptiShearSpace),
    "generic": (GenericConfig, GenericSpace),
}
