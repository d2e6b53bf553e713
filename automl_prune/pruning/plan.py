"""A pruning plan: metric + pattern + sparsity (global, per block, per layer) + mode + mask
refinement (DSnoT) + channel permutation (N:M) + weight update (SparseGPT, ADMM).

Plain data that round-trips through YAML, so a plan found on one machine prunes a model on
another. ``prune_model(model, plan, ...)`` applies it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_serializer, model_validator

from ..data.settings import Calibration, Heldout
from ..errors import UserError
from ..metrics.spec import metric_from_dict
from .masks import parse_pattern

Group = Literal["row", "matrix", "column_block"]
#: the plan fields that allocate the sparsity over blocks and layers (the rest decides how a layer is pruned)
ALLOCATION_FIELDS = ("sparsity", "layer_sparsity")
#: what may follow the mask (plan fields; the search's reconstruction section offers the same)
Update = Literal["none", "sparsegpt", "admm"]
Refine = Literal["none", "dsnot"]
Permute = Literal["none", "heuristic", "lsa"]
#: how a plan made for one model is carried over to another (pruning/transfer.py)
TransferKind = Literal["metric", "depth"]


class AdmmOptions(BaseModel):
    """ADMM update settings (Boza 2024): iterations, penalty rho, damping relative to the mean
    diagonal of the normalised Gram matrix, and gradual mask selection over the first
    ``gradual_iterations`` iterations (cubic schedule). ``gradual_score``: what the gradual masks
    rank, ``metric`` (the plan's metric on the iterate, the reference) or ``obs`` (the iterate's
    columns divided by sqrt([G'^-1]_jj) of the damped normalised Gram matrix first: with Wanda's
    metric, the OBS saliency w'^2 / [G'^-1]_jj that SparseGPT prunes by)."""

    model_config = ConfigDict(extra="forbid")
    iterations: int = Field(20, ge=1, le=1000)
    rho: float = Field(1.0, gt=0.0)
    damping: float = Field(0.1, ge=0.0)
    gradual: bool = False
    gradual_iterations: int = Field(15, ge=1)
    gradual_score: Literal["metric", "obs"] = "metric"

    @model_serializer(mode="wrap")
    def _without_the_default_score(self, handler):
        # plans, keys and fingerprints written before gradual_score existed stay byte-identical
        out = handler(self)
        if isinstance(out, dict) and out.get("gradual_score") == "metric":
            out.pop("gradual_score")
        return out


class DsnotOptions(BaseModel):
    """DSnoT settings, defaults as in the reference: stop a row when its expected output shift is at
    most ``threshold`` or after ``max_cycles`` swaps; regrowth divides by the input variance to
    ``var_power``; ``same_sign`` also stops a row before a swap would flip the sign of its shift
    (always on for N:M); layers with a name part in ``skip`` (``mlp``: every MLP projection,
    ``down_proj``: one kind) keep the metric's mask."""

    model_config = ConfigDict(extra="forbid")
    max_cycles: int = Field(50, ge=0)
    threshold: float = Field(0.1, ge=0.0)
    var_power: float = Field(1.0, ge=0.0)
    same_sign: bool = False
    skip: list[str] = ["mlp"]


class PlanCalibration(Calibration):
    """The calibration a plan was found with (written by a search into best.yaml and the other plan
    files): ``automl-prune prune --plan`` takes these as its defaults, so the prune computes the
    statistics the search scored the plan on; command-line flags still override. ``data_dir`` is a
    hint (the folder the search read), used when no --data-dir is given and the folder exists."""

    data_dir: str | None = None


class PlanModel(BaseModel):
    """The model a plan was made for (written by the prune command and a search): its name as it was
    given (alias, path or hub id), its block count and ``layers_digest``, a short digest of its
    prunable layers' names and shapes (pruning/transfer.py). A plan is applied to another model
    only by an explicit transfer. A hand-written record may give the block count alone."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = None
    blocks: int = Field(ge=1)
    layers_digest: str | None = None

    @model_serializer(mode="wrap")
    def _known(self, handler):
        # a record written without a name or digest stays so
        return {k: v for k, v in handler(self).items() if v is not None}


class PlanTransfer(BaseModel):
    """How a plan was carried over from the model it was made for (``source``, when known) to the one
    its ``model`` names: ``metric`` (its method at its global target, uniform allocation) or
    ``depth`` (its per-layer targets mapped by relative depth, renormalised to the global count)."""

    model_config = ConfigDict(extra="forbid")
    kind: TransferKind
    source: PlanModel | None = None


#: what a plan records of where it came from: never part of what is pruned (layer_settings leaves it out)
PROVENANCE_FIELDS = ("calibration", "heldout", "model", "transfer")
#: fields written to YAML only when they differ from their defaults (plans stay short)
_QUIET_DEFAULTS = {"refine": "none", "permute": "none", "admm": AdmmOptions().model_dump(), "dsnot": DsnotOptions().model_dump(),
                   **dict.fromkeys(PROVENANCE_FIELDS)}


class PruningPlan(BaseModel):
    """What to prune and how. ``metric: null`` is allowed only with ``update: sparsegpt`` (SparseGPT
    then chooses the mask itself from its OBS saliency).

    ``refine: dsnot`` refines the metric's mask (per-row swaps, sparsity per row kept);
    ``permute: heuristic | lsa`` (N:M only) chooses the mask in a permuted input-channel order,
    so the mask is N:M in that order; ``update: sparsegpt | admm`` then updates the kept weights.
    """

    model_config = ConfigDict(extra="forbid")

    metric: Any = None
    sparsity: float | list[float] | None = None
    layer_sparsity: dict[str, float] = {}
    pattern: str = "unstructured"
    group: Group | None = None
    mode: Literal["one-shot", "sequential"] = "one-shot"
    update: Update = "none"
    refine: Refine = "none"
    permute: Permute = "none"
    admm: AdmmOptions = AdmmOptions()
    dsnot: DsnotOptions = DsnotOptions()
    #: where the plan came from (a search's calibration and held-out text, the model it was made for,
    #: a transfer from another model); not part of what is pruned
    calibration: PlanCalibration | None = None
    heldout: Heldout | None = None
    model: PlanModel | None = None
    transfer: PlanTransfer | None = None

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
        if self.metric is None and (self.refine != "none" or self.permute != "none"):
            raise ValueError("refine and permute work on a metric's scores: give a metric (e.g. {name: wanda})")
        nm = self.nm
        if self.permute != "none" and nm is None:
            raise ValueError("permute applies to N:M patterns only (e.g. pattern: '2:4'); use permute: none")
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
    def needs_gram(self) -> bool:
        """Whether the weight update reads the Gram matrix X^T X of each layer's inputs."""
        return self.update in ("sparsegpt", "admm")

    @property
    def nm(self) -> tuple[int, int] | None:
        return None if self.pattern == "unstructured" else parse_pattern(self.pattern)

    def layer_settings(self) -> dict:
        """Everything that decides how a layer is pruned at a given target: the plan's fields but its
        allocation (``ALLOCATION_FIELDS``) and its provenance (``PROVENANCE_FIELDS``)."""
        return self.model_dump(mode="json", exclude={*ALLOCATION_FIELDS, *PROVENANCE_FIELDS})

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

    def sparsity_of(self, name: str, n_blocks: int) -> float:
        """``sparsity_for`` of a layer named by its place in the model, ``"<block>.<layer>"``."""
        block, layer = name.split(".", 1)
        return self.sparsity_for(int(block), layer, n_blocks)

    def describe(self) -> str:
        metric = "sparsegpt" if self.metric is None else self.metric.name
        target = self.pattern if self.nm else (f"{self.sparsity:.0%}" if isinstance(self.sparsity, float) else "per-block sparsity")
        extra = "".join([f" + {self.refine}" if self.refine != "none" else "",
                         f" + channel permutation ({self.permute})" if self.permute != "none" else "",
                         f" + {self.update} update" if self.update != "none" else ""])
        return f"{metric} {target} ({self.mode}{extra})"

    # ----- YAML ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        data = self.model_dump(mode="json")
        for key, default in _QUIET_DEFAULTS.items():
            if data.get(key) == default:
                del data[key]
        return data

    def with_fields(self, *, source: str = "plan", **fields) -> "PruningPlan":
        """A copy with ``fields`` replaced, validated as a new plan (a bad value names the field)."""
        return PruningPlan.from_dict(self.to_dict() | fields, source=source) if fields else self

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
