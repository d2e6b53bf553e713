"""Pruning metrics: specs as plain data (``spec``) and the scoring kernel (``kernel``)."""

from automl_prune.metrics.kernel import default_group, requires_stats, score
from automl_prune.metrics.spec import (
    BaWAMetric,
    MagnitudeMetric,
    MetricSpec,
    OptiShearMetric,
    RIAMetric,
    StadeMetric,
    WandaMetric,
    metric_from_dict,
    to_dict,
)

__all__ = [
    "BaWAMetric",
    "MagnitudeMetric",
    "MetricSpec",
    "OptiShearMetric",
    "RIAMetric",
    "StadeMetric",
    "WandaMetric",
    "default_group",
    "metric_from_dict",
    "requires_stats",
    "score",
    "to_dict",
]
