"""The named reference methods as pruning plans."""

from __future__ import annotations

from ..errors import UserError
from .plan import PruningPlan

#: method name -> plan fields (metric and weight update); sparsity and pattern come from the user
METHODS: dict[str, dict] = {
    "magnitude": {"metric": {"name": "magnitude"}},
    "wanda": {"metric": {"name": "wanda"}},
    "ria": {"metric": {"name": "ria"}},
    "stade": {"metric": {"name": "stade"}},
    # BaWA defaults (design notes 4): sum form, alpha = beta = 1, gamma = 0.5
    "bawa": {"metric": {"name": "bawa", "form": "sum", "alpha": 1.0, "beta": 1.0, "gamma": 0.5}},
    "sparsegpt": {"metric": None, "update": "sparsegpt", "group": "column_block"},
    # Boza 2024 as its reference runs it: Wanda's score (|W| on the normalised problem) over the
    # whole matrix, chosen gradually during the first 15 of 20 ADMM iterations
    "admm": {"metric": {"name": "wanda"}, "group": "matrix", "update": "admm", "admm": {"gradual": True}},
    # DSnoT on Wanda's mask (the reference's default initial method)
    "dsnot": {"metric": {"name": "wanda"}, "refine": "dsnot"},
}

#: allocation baselines: Wanda scores with a layerwise allocation at the papers' settings (OWL M = 5,
#: lambda = 0.08; AlphaPruning eps = 0.3): name -> (allocation space, its named point)
ALLOCATION_BASELINES: dict[str, tuple[str, str]] = {"owl": ("owl", "wanda+owl"), "alphapruning": ("alpha", "wanda+alphapruning")}
#: every name a study's final comparison accepts as a baseline
BASELINES = (*METHODS, *ALLOCATION_BASELINES)


def plan_for_method(
    method: str,
    *,
    sparsity: float | None = None,
    pattern: str = "unstructured",
    mode: str = "one-shot",
    update: str | None = None,
    refine: str | None = None,
    permute: str | None = None,
) -> PruningPlan:
    """The plan of a named method (``wanda``, ``sparsegpt``, ...) at a sparsity or N:M pattern."""
    key = method.strip().lower()
    if key not in METHODS:
        raise UserError(f"unknown method {method!r}; choose one of {', '.join(METHODS)} or pass --plan FILE")
    fields = dict(METHODS[key], pattern=pattern, mode=mode)
    if sparsity is not None:
        fields["sparsity"] = sparsity
    for key, value in dict(update=update, refine=refine, permute=permute).items():
        if value is not None:
            fields[key] = value
    return PruningPlan.from_dict(fields, source=f"method {method}")
