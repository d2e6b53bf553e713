"""The built-in recipe: `automl-prune search --model M --sparsity S` (or ``--pattern N:M``), or
``recipe: {name: auto, sparsity: S}`` in a config. Only the target, the update choice and the time
budget are given; the rest follows from them, the same for every model:

1. the metric: TPE over the BaWA metric space (the named metrics among its points) on the KL to
   the dense model over 2 probe windows, for 30% of the hours;
2. multi-fidelity selection of the 6 best distinct candidates and the named points on fresh
   calibration-domain tokens (2,048, then 16,384), each with the weight update (ADMM with gradual
   masks, or SparseGPT) when the update is allowed;
3. unstructured targets: EvoPress's evolution of the per-layer allocation of the selected plan over
   a level database of its (updated) layers, 5 levels either side of uniform, for 35% of the hours
   (the database's build is not counted);
4. the final application in one-shot and sequential mode, the mode chosen on 16,384 fresh
   calibration-domain tokens, and the comparison with the named methods in both modes on the
   held-out text (which no choice reads).

Settings written in the config win over the recipe's (``extends``-style merge), so a recipe can be
tuned without copying it. The sections are built here as plain data; config.py merges and checks them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: shares of ``hours`` given to the metric search and the allocation evolution; the rest is for the
#: model load, the statistics, the selection stages, the level database and the final comparison
METRIC_SHARE, ALLOCATION_SHARE = 0.30, 0.35
#: the least a phase can do something with: seconds of metric search and of evolution
MIN_PHASE_SECONDS = 60


class RecipeConfig(BaseModel):
    """``recipe:`` of a study config: the target (``sparsity`` unstructured, or ``pattern`` N:M), the
    weight update (``auto``: ADMM, this tool's best update) and the hours the study may take."""

    model_config = ConfigDict(extra="forbid")
    name: Literal["auto"] = "auto"
    sparsity: float | None = Field(None, gt=0.0, lt=1.0)
    pattern: str | None = None
    update: Literal["none", "sparsegpt", "admm", "auto"] = "auto"
    hours: float = Field(1.0, gt=0.0)

    @model_validator(mode="after")
    def _one_target(self) -> "RecipeConfig":
        if (self.sparsity is None) == (self.pattern is None):
            raise ValueError("the recipe needs one target: sparsity (unstructured) or pattern (N:M), not both")
        seconds = self.hours * 3600
        short = [f"{name} gets {share * seconds:.0f} s" for name, share, applies in
                 (("the metric search", METRIC_SHARE, True), ("the allocation evolution", ALLOCATION_SHARE, self.sparsity is not None))
                 if applies and share * seconds < MIN_PHASE_SECONDS]
        if short:
            need = MIN_PHASE_SECONDS / min(METRIC_SHARE, ALLOCATION_SHARE) / 3600
            raise ValueError(f"hours {self.hours:g} is too small: {' and '.join(short)} (at least {MIN_PHASE_SECONDS} s "
                             f"each); give hours >= {need:.2f}")
        return self

    @property
    def update_used(self) -> str:
        return "admm" if self.update == "auto" else self.update

    def label(self) -> str:
        """``auto-50``, ``auto-2-4-update``: the default output folder's name."""
        target = f"{round(100 * self.sparsity):g}" if self.sparsity is not None else self.pattern.replace(":", "-")
        return f"auto-{target}" + ("-update" if self.update_used != "none" else "")


def sections(recipe: RecipeConfig) -> dict[str, Any]:
    """The study config sections the recipe stands for (a config's own settings are merged on top)."""
    seconds = recipe.hours * 3600
    update = recipe.update_used
    unstructured = recipe.sparsity is not None
    pattern = ({"name": "unstructured", "sparsity": recipe.sparsity} if unstructured
               else {"name": "nm", "pattern": recipe.pattern})
    reconstruction = {"admm": {"update": "admm", "admm": {"gradual": True}}, "sparsegpt": {"update": "sparsegpt"}}.get(update)
    baselines = (["admm", "sparsegpt"] if update != "none" else []) + ["wanda", "ria", "dsnot"] + (["owl"] if unstructured else [])
    out: dict[str, Any] = {
        "calibration": {"source": "c4", "nsamples": 32, "seqlen": 512, "seed": 0},
        "probe": {"nsamples": 8, "seqlen": 512, "seed": 1},
        "heldout": {"source": "wikitext2", "seqlen": 1024, "windows": 16},
        "space": {"metric": {"name": "bawa"}, "allocation": "uniform", "pattern": pattern},
        "objectives": [{"name": "kl", "params": {"windows": 2, "topk": 512}}],
        "searcher": {"name": "tpe", "seed": 0, "n_startup_trials": 20},
        "budget": {"trials": 1000, "timeout": round(METRIC_SHARE * seconds)},
        "selection": {"stages": [{"tokens": 2048, "keep": 3}, {"tokens": 16384, "keep": 1}], "candidates": 6,
                      "objective": {"name": "kl", "params": {"topk": 512}},
                      **({"reconstruction": reconstruction} if reconstruction else {})},
        "final": {"baselines": baselines, "top": 1, "fidelity_sample": 0, "modes": ["one-shot", "sequential"],
                  "mode_choice": {"tokens": 16384}},
    }
    if unstructured:
        out["allocation_search"] = {
            "allocation": {"name": "levels", "levels": 5, "base": "uniform"},
            "searcher": {"name": "evolution", "seed": 0, "offspring": 16, "survivors": 3, "stage_tokens": 2048,
                         "stage_pool": 16},
            "budget": {"trials": 3000, "timeout": round(ALLOCATION_SHARE * seconds)}}
    return out
