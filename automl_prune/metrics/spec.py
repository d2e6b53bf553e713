"""Pruning-metric specifications: plain, frozen data that round-trips through YAML.

A spec says *which* score to compute; :func:`automl_prune.metrics.kernel.score` computes it.
Every spec is a pydantic model with a ``name`` literal; :data:`MetricSpec` is the discriminated
union of them all, so a plan can hold any metric and validate it from a dict::

    >>> metric_from_dict({"name": "ria", "a": 0.5})
    RIAMetric(name='ria', a=0.5)
    >>> metric_from_dict("wanda")
    WandaMetric(name='wanda')
    >>> to_dict(BaWAMetric(form="product", alpha=0, beta=0, gamma=1))["form"]
    'product'

Unknown names, unknown fields and out-of-range values raise pydantic's ``ValidationError``
(a ``ValueError``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, TypeAdapter

# OptiShear operator names (see kernel.py for their exact maths)
Transform = Literal["identity", "sqrt", "square", "exp", "log", "sigmoid", "softmax"]
Coefficient = Literal["none", "row_sum", "column_sum", "row_column_sum", "total_sum", "mean", "frobenius"]
TRANSFORMS: tuple[str, ...] = Transform.__args__  # type: ignore[attr-defined]
COEFFICIENTS: tuple[str, ...] = Coefficient.__args__  # type: ignore[attr-defined]


class _Metric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe dict (``name`` first); inverse of :func:`metric_from_dict`."""
        return self.model_dump(mode="json")


class MagnitudeMetric(_Metric):
    """|W_ij|."""

    name: Literal["magnitude"] = "magnitude"


class WandaMetric(_Metric):
    """Wanda: |W_ij| * ||X_j||_2."""

    name: Literal["wanda"] = "wanda"


class RIAMetric(_Metric):
    """RIA: (|W_ij| / sum_k |W_kj| + |W_ij| / sum_k |W_ik|) * sqrt(scaler_row_j) ** a."""

    name: Literal["ria"] = "ria"
    a: FiniteFloat = Field(0.5, ge=0.0, description="activation exponent (RIA's default 0.5)")


class StadeMetric(_Metric):
    """STADE: |W_ij| * std(X_j) (per-token standard deviation; same ranking as W^2 * Var)."""

    name: Literal["stade"] = "stade"


class BaWAMetric(_Metric):
    """BaWA family: magnitude normalised by row/column norms, times an activation power.

    sum form:     (|W_ij| / r_i^alpha + |W_ij| / k_j^beta) * a_j^gamma
    product form:  |W_ij| / (r_i^alpha * k_j^beta) * a_j^gamma

    r_i = ||W_i,:||, k_j = ||W_:,j|| (``norm``), a_j = the activation statistic ``activation``,
    optionally clipped at its ``clip_quantile`` over the channels before the power.
    Wanda = product(alpha=0, beta=0, gamma=1); RIA = sum(1, 1, 0.5, norm l1) up to a constant.
    """

    name: Literal["bawa"] = "bawa"
    form: Literal["sum", "product"] = "sum"
    alpha: FiniteFloat = Field(1.0, description="row-norm exponent")
    beta: FiniteFloat = Field(1.0, description="column-norm exponent")
    gamma: FiniteFloat = Field(0.5, ge=0.0, description="activation exponent")
    norm: Literal["l1", "l2"] = "l2"
    activation: Literal["l2", "std", "rms", "mean_abs"] = "l2"
    clip_quantile: float | None = Field(None, gt=0.0, le=1.0, description="clip a_j at this quantile over channels")


class OptiShearMetric(_Metric):
    """OptiShear meta-metric: S = [C_W(|W|) * F_W(|W|)] * [C_X(x) * F_X(sqrt x)], x = scaler_row."""

    name: Literal["optishear"] = "optishear"
    f_w: Transform = "identity"
    f_x: Transform = "identity"
    c_w: Coefficient = "none"
    c_x: Coefficient = "none"


MetricSpec = Annotated[
    Union[MagnitudeMetric, WandaMetric, RIAMetric, StadeMetric, BaWAMetric, OptiShearMetric],
    Field(discriminator="name"),
]
METRIC_NAMES: tuple[str, ...] = ("magnitude", "wanda", "ria", "stade", "bawa", "optishear")

_ADAPTER: TypeAdapter[Any] = TypeAdapter(MetricSpec)


def metric_from_dict(data: Any) -> MetricSpec:
    """Build a spec from a dict (``{"name": ..., **params}``), a bare name, or a spec (returned)."""
    if isinstance(data, _Metric):
        return data  # type: ignore[return-value]
    if isinstance(data, str):
        data = {"name": data}
    return _ADAPTER.validate_python(data)


def to_dict(metric: MetricSpec) -> dict[str, Any]:
    """Plain dict of a spec, safe for ``yaml.safe_dump``."""
    return metric.to_dict()
