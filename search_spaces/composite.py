"""Composed spaces (metric x allocation x pattern) and ``make_space``, the registry by name.

Config (the ``space:`` section of a study config)::

    metric:     {name: bawa | optishear | generic, ...}      default {name: bawa}
    allocation: {name: uniform | owl | alpha | offsets | depth, ...}   default uniform
    pattern:    {name: unstructured | sparsity | nm, ...}    default {name: unstructured, sparsity: 0.5}
    reconstruction: {update: [...], refine: [...], permute: [...]}   default: none of them

Each section may also be a bare name (``metric: optishear``). Unknown sections, names and
fields, bad values and impossible combinations (N:M with a non-uniform allocation, a target
outside the allocation bounds) raise UserError naming the field (``space.metric.alpha``).

Named points of a composed space: every metric point with the allocation's default (first) point,
plus the Wanda point (else the first metric point) with each other allocation point, each at every
pattern point, plus the anchor with each other weight update of the reconstruction section.
Labels: ``metric``, ``metric+allocation`` when the allocation point is not "uniform",
``metric+update`` (``wanda+admm``), ``@pattern-label`` when the pattern has several points
(``wanda+owl@s=0.5``).
"""

from __future__ import annotations

import json
from typing import Any

from automl_prune.errors import UserError
from automl_prune.pruning.plan import PruningPlan

from .allocations import ALLOCATION_SPACES, AllocationPart
from .base import SearchSpace, check_params
from .metrics import METRIC_SPACES, MetricPart
from .parts import parse_config
from .patterns import PATTERN_SPACES, PatternPart
from .reconstruction import RECONSTRUCTION_SPACES, ReconstructionConfig, ReconstructionSpace

DEFAULT_CONFIG: dict[str, Any] = {
    "metric": {"name": "bawa"},
    "allocation": {"name": "uniform"},
    "pattern": {"name": "unstructured", "sparsity": 0.5},
    "reconstruction": {"name": "choice"},
}


class ComposedSpace(SearchSpace):
    """The product of a metric, an allocation, a pattern and a reconstruction part (union of their
    parameters)."""

    def __init__(self, metric: MetricPart, allocation: AllocationPart, pattern: PatternPart,
                 reconstruction: ReconstructionSpace | None = None):
        self.metric, self.allocation, self.pattern = metric, allocation, pattern
        self.reconstruction = reconstruction or ReconstructionSpace(ReconstructionConfig())
        self.name = f"{metric.name}+{allocation.name}+{pattern.name}"
        if self.reconstruction.permutes and pattern.nm is None:
            raise UserError("invalid space config: field 'space.reconstruction.permute': channel permutation applies to "
                            "N:M patterns only; use permute: [none] or an nm pattern")
        if pattern.nm is not None and not allocation.uniform:
            raise UserError(f"invalid space config: field 'space.allocation': the N:M pattern {pattern.pattern} fixes "
                            f"every layer's sparsity; use allocation uniform (got {allocation.name!r})")
        lo, hi = pattern.target_range()
        if hasattr(allocation, "set_target"):  # per-layer ladders around a fixed target
            if lo != hi:
                raise UserError(f"invalid space config: field 'space.pattern': allocation {allocation.name!r} needs one "
                                f"target sparsity, not the range [{lo}, {hi}]")
            allocation.set_target(lo)
        if not allocation.uniform and not (allocation.bounds[0] <= lo and hi <= allocation.bounds[1]):
            raise UserError(f"invalid space config: field 'space.pattern': target sparsity [{lo}, {hi}] lies outside "
                            f"the allocation bounds {list(allocation.bounds)}")

    @property
    def parts(self) -> tuple:
        return (self.metric, self.allocation, self.pattern, self.reconstruction)

    def distributions(self) -> dict:
        out: dict = {}
        for part in self.parts:
            out.update(part.distributions())
        return out

    def decode(self, params: dict, profile: Any = None) -> PruningPlan:
        check_params(self, params)
        metric, group = self.metric.decode(params)
        target = self.pattern.target(params)
        fields: dict[str, Any] = dict(metric=metric, pattern=self.pattern.pattern, group=group)
        if self.pattern.nm is None:
            alloc = self.allocation.allocate(params, profile, target)
            if isinstance(alloc, dict):  # per-layer sparsities
                fields.update(sparsity=float(target), layer_sparsity=alloc)
            else:
                fields["sparsity"] = alloc
        fields.update(self.reconstruction.plan_fields(params))
        return PruningPlan.from_dict(fields, source=f"candidate of space {self.name}")

    def named_points(self) -> dict[str, dict]:
        metrics = self.metric.named_points()
        allocs = list(self.allocation.named_points().items())
        patterns = self.pattern.named_points()
        if not metrics or not allocs or not patterns:
            return {}
        anchor = "wanda" if "wanda" in metrics else next(iter(metrics))
        recons = [(k, v) for k, v in self.reconstruction.named_points().items() if v is not None]
        # every metric with the first allocation; the anchor metric with every other allocation, and
        # with every allocation again under each mask refinement (Wanda + DSnoT, uniform and OWL)
        combos = ([(m, allocs[0], recons[0]) for m in metrics] + [(anchor, a, recons[0]) for a in allocs[1:]]
                  + [(anchor, a, r) for r in recons[1:] for a in allocs])
        out: dict[str, dict] = {}
        for plabel, ppoint in patterns.items():
            for mlabel, (alabel, apoint), (rlabel, rpoint) in combos:
                label = (mlabel + ("" if alabel == "uniform" else f"+{alabel}") + (f"+{rlabel}" if rlabel else "")
                         + (f"@{plabel}" if plabel else ""))
                out[label] = {**metrics[mlabel], **apoint, **rpoint, **ppoint}
        return out

    def canonical_key(self, params: dict) -> str:
        key = {
            "metric": self.metric.canonical(params, nm=self.pattern.nm is not None),
            "allocation": self.allocation.canonical(params),
            "pattern": self.pattern.canonical(params),
        }
        if not self.reconstruction.trivial:
            key["reconstruction"] = self.reconstruction.canonical(params)
            if self.reconstruction.fields(params)["permute"] != "none":
                # the channel permutation reads the scores' column sums: no reduction holds
                key["metric"] = ["raw", self.metric.decode(params)[0].model_dump(mode="json")]
        return json.dumps(key, sort_keys=True, separators=(",", ":"))

    def bind(self, profile: Any) -> "ComposedSpace":
        allocation = self.allocation.bind(profile)
        return self if allocation is self.allocation else ComposedSpace(self.metric, allocation, self.pattern,
                                                                        self.reconstruction)


_REGISTRIES = {"metric": METRIC_SPACES, "allocation": ALLOCATION_SPACES, "pattern": PATTERN_SPACES,
               "reconstruction": RECONSTRUCTION_SPACES}


def make_space(config: dict | SearchSpace | None = None) -> SearchSpace:
    """A composed space from its config (see the module docstring); a space is returned as is."""
    if isinstance(config, SearchSpace):
        return config
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise UserError(f"invalid space config: field 'space': expected a mapping with metric/allocation/pattern, got {config!r}")
    unknown = [k for k in config if k not in _REGISTRIES]
    if unknown:
        raise UserError(f"invalid space config: field 'space.{unknown[0]}': unknown section; "
                        f"use {', '.join(_REGISTRIES)}")
    parts = []
    for kind, registry in _REGISTRIES.items():
        section = config.get(kind, DEFAULT_CONFIG[kind])
        where = f"space.{kind}"
        if isinstance(section, str):
            section = {"name": section}
        if not isinstance(section, dict):
            raise UserError(f"invalid space config: field '{where}': expected a mapping or a name, got {section!r}")
        name = section.get("name", "choice" if kind == "reconstruction" else None)
        section = {**section, "name": name} if name is not None else section
        if name not in registry:
            raise UserError(f"invalid space config: field '{where}.name': unknown {kind} space {name!r}; "
                            f"choose one of {', '.join(registry)}")
        cfg_cls, part_cls = registry[name]
        cfg = parse_config(cfg_cls, section, where)
        parts.append(part_cls(cfg, where=where) if part_cls.__name__ == "GenericSpace" else part_cls(cfg))
    return ComposedSpace(*parts)
