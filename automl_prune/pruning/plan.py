"""A pruning plan: metric + pattern + sparsity (global, per block, per layer) + mode + weight update.

Plain data that round-trips through YAML, so a plan found on one machine prunes a model on
another. ``prune_model(model, plan, ...)`` applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_serializer, field_validator, model_validator

from ..errors import UserError
from ..metrics.spec import metric_from_dict
from .masks import parse_pattern

Group = Literal["row", "matrix", "column_block"]


class PruningPlan(BaseModel):
    """What to prune and how. ``metric: null`` is allowed only with ``update: sparsegpt`` (SparseGPT
    then chooses the mask itself from its OBS saliency)."""

    model_config = ConfigDict(extra="forbid")

    metric: Any = None
    sparsity: float | list[float] | None = None
    layer_sparsity: dict[str, float] = {}
    pattern: str = "unstructured"
    group: Group | None = None
    mode: Literal["one-shot", "sequential"] = "one-shot"
    update: Literal["none", "sparsegpt"] = "none"

    @field_validator("metric", mode="before")
    @classmethod
    def _metric(cls, v: Any) -> Any:
        return None if v is None else metric_from_dict(v)

    @field_serializer("metric")
    def _dump_metric(self, v: Any) -> Any:
        return None if v is None else v.model_dump(mode="json")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        v = v.strip().lower()
        if v != "unstructured":
            n, m = parse_pattern(v)
            v = f"{n}:{m}"
        return v

    @model_validator(mode="after")
    def _check(self) -> "PruningPlan":
        if self.metric is None and self.update != "sparsegpt":
            raise ValueError("metric is required unless update is 'sparsegpt'")
        nm = self.nm
        if nm is not None:
            implied = 1 - nm[0] / nm[1]
            if self.sparsity is None:
                self.sparsity = implied
            elif isinstance(self.sparsity, list) or abs(self.sparsity - implied) > 1e-9:
                raise ValueError(f"pattern {self.pattern} fixes the sparsity at {implied:g}; drop 'sparsity' or use pattern: unstructured")
            if self.layer_sparsity:
                raise ValueError("layer_sparsity cannot be combined with an N:M pattern")
        if self.sparsity is None:
            raise ValueError("sparsity is required for an unstructured pattern (e.g. sparsity: 0.5)")
        values = (self.sparsity if isinstance(self.sparsity, list) else [self.sparsity]) + list(self.layer_sparsity.values())
        bad = [s for s in values if not 0.0 <= s < 1.0]
        if bad:
            raise ValueError(f"sparsity must lie in [0, 1); got {bad}")
        return self

    # ----- queries ---------------------------------------------------------------------------
    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else parse_pattern(self.pattern)

    def sparsity_for(self, block: int, layer: str, n_blocks: int) -> float:
        """Target sparsity of layer ``layer`` (name relative to its block) in block ``block``."""
        full = f"{block}.{layer}"
        if full in self.layer_sparsity:
            return self.layer_sparsity[full]
        if isinstance(self.sparsity, list):
            if len(self.sparsity) != n_blocks:
                raise UserError(f"the plan lists {len(self.sparsity)} per-block sparsities but the model has {n_blocks} blocks")
            return self.sparsity[block]
        return float(self.sparsity)

    def describe(self) -> str:
        metric = "sparsegpt" if self.metric is None else self.metric.name
        target = self.pattern if self.nm else (f"{self.sparsity:.0%}" if isinstance(self.sparsity, float) else "per-block sparsity")
        upd = "" if self.update == "none" else f" + {self.update} update"
        return f"{metric} {target} ({self.mode}{upd})"

    # ----- YAML ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "plan") -> "PruningPlan":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "plan"
            raise UserError(f"invalid {source}: field '{where}': {first['msg']}") from None

    @classmethod
    def load(cls, path: str | Path) -> "PruningPlan":
        p = Path(path)
        if not p.is_file():
            raise UserError(f"plan file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise UserError(f"plan file {p} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"plan file {p} must hold a mapping (metric, sparsity, pattern, ...)")
        return cls.from_dict(data, source=f"plan file {p}")
