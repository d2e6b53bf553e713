"""Reconstruction space: what happens after the metric's mask, as searchable choices.

``space.reconstruction`` (optional; default: no update, no refinement, no permutation)::

    reconstruction:
      update:  [none, sparsegpt, admm]   # weight update of the kept weights
      refine:  [none, dsnot]             # DSnoT mask refinement before the update
      permute: [none, heuristic]         # N:M only: RIA channel permutation (or lsa)
      admm: {gradual: true}              # ADMM settings when the update is admm (the plan's defaults
                                         # otherwise; --method admm uses gradual masks)

Each list is a categorical parameter (``recon.update``, ...); a single choice is fixed. Named
points: the first choice of each (the default, labelled by what is not "none", e.g. ``dsnot``),
then the anchor metric with each other update and each other refinement.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator

from automl_prune.pruning.plan import AdmmOptions, Permute, Refine, Update

from .parts import Part, PartConfig

#: the plan fields this part decides
FIELDS = ("update", "refine", "permute")


class ReconstructionConfig(PartConfig):
    name: Literal["choice"] = "choice"
    update: list[Update] = ["none"]
    refine: list[Refine] = ["none"]
    permute: list[Permute] = ["none"]
    admm: AdmmOptions = AdmmOptions()

    @field_validator("update", "refine", "permute")
    @classmethod
    def _nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("give at least one choice")
        return v


class ReconstructionSpace(Part):
    prefix = "recon."
    name = "choice"

    def __init__(self, config: ReconstructionConfig):
        super().__init__()
        self.config = config
        for key in FIELDS:
            self.add_choice(key, getattr(config, key))

    @property
    def trivial(self) -> bool:
        """No choice besides 'none' anywhere: plans and canonical keys stay as without the section."""
        return all(getattr(self.config, key) == ["none"] for key in FIELDS)

    @property
    def permutes(self) -> bool:
        return any(p != "none" for p in self.config.permute)

    def fields(self, params: dict) -> dict[str, str]:
        """The plan fields of these parameters."""
        return {key: self.value(params, key) for key in FIELDS}

    def plan_fields(self, params: dict) -> dict:
        """The plan fields a candidate gets: the choices other than "none", and the ADMM settings
        when the update is ADMM."""
        out: dict = {k: v for k, v in self.fields(params).items() if v != "none"}
        if out.get("update") == "admm":
            out["admm"] = self.config.admm.model_dump()
        return out

    def named_points(self) -> dict[str, dict]:
        first = {key: getattr(self.config, key)[0] for key in FIELDS}

        def label(point: dict) -> str:
            return "+".join(v for k in ("refine", "permute", "update") if (v := point[k]) != "none")

        out = {label(first): self.representable(first)}
        for key in ("update", "refine"):
            for choice in dict.fromkeys(getattr(self.config, key)[1:]):
                point = {**first, key: choice}
                out[label(point)] = self.representable(point)
        return out

    def canonical(self, params: dict) -> Any:
        return [self.value(params, key) for key in FIELDS]


RECONSTRUCTION_SPACES = {"choice": (ReconstructionConfig, ReconstructionSpace)}
