"""The named reference methods as pruning plans."""

from __future__ import annotations

from ..allocation.rules import DEFAULT_BOUNDS, alpha_sparsities, owl_sparsities
from ..errors import UserError
from ..metrics.kernel import default_group
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

#: the allocations' settings in their papers: OWL (M = 5, lambda = 0.08), AlphaPruning (eps = 0.3); the
#: allocation spaces' named points and the allocation baselines below both read them
OWL_SETTING = {"M": 5.0, "lambda": 0.08}
ALPHAPRUNING_SETTING = {"eps": 0.3}
#: allocation baselines: Wanda scores with a layerwise allocation at its paper's setting
ALLOCATION_BASELINES: dict[str, str] = {"owl": "owl", "alphapruning": "alpha"}
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


def allocation_baseline_plan(method: str, sparsity: float, profile, block_alphas=None) -> PruningPlan:
    """Wanda at ``sparsity`` with the per-block allocation of ``method`` (``owl`` or ``alphapruning``)
    at its paper's setting, from the model's allocation ``profile`` (``block_alphas``: the blocks'
    spectral exponents when the profile has none)."""
    weights = profile.block_params
    if ALLOCATION_BASELINES.get(method) == "owl":
        ratios = profile.outlier_ratios(OWL_SETTING["M"])
        blocks = owl_sparsities(ratios, weights, sparsity, OWL_SETTING["lambda"], bounds=DEFAULT_BOUNDS)
    elif ALLOCATION_BASELINES.get(method) == "alpha":
        alphas = profile.block_alphas() if block_alphas is None else block_alphas
        blocks = alpha_sparsities(alphas, weights, sparsity, ALPHAPRUNING_SETTING["eps"], bounds=DEFAULT_BOUNDS)
    else:
        raise UserError(f"unknown allocation baseline {method!r}; choose one of {', '.join(ALLOCATION_BASELINES)}")
    plan = plan_for_method("wanda", sparsity=blocks)
    return plan.with_fields(group=default_group(plan.metric))  # stated, as the spaces' plans state it
