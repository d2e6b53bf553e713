"""What the search-space tests share (test_search_spaces, test_named_points, test_canonical_keys):
the spaces they combine and the mask comparisons. Their fixtures ``prune`` and ``plan_scores`` are
in conftest.py."""

from __future__ import annotations


import optuna
import torch


optuna.logging.set_verbosity(optuna.logging.WARNING)

BLOCKS = 4
METRICS = ["bawa", "optishear", "generic"]
ALLOCATIONS = ["uniform", "owl", "alpha", {"name": "offsets", "n_blocks": BLOCKS}, "depth"]
PATTERNS = ["unstructured", "sparsity", "nm"]


def same_masks(a: dict, b: dict) -> bool:
    # no weight of the random model is exactly zero, so equal pruned weights <=> equal masks
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def near_tie_equal(sa: torch.Tensor, sb: torch.Tensor, ma: torch.Tensor, mb: torch.Tensor, ranking: str,
                   m: int = 4, rtol: float = 1e-5) -> bool:
    """Masks ``ma``/``mb`` of scores ``sa``/``sb`` are equal up to float rounding of near-ties (the
    contract's caveat): inside each comparison group (a row, the matrix, or an N:M group of ``m``)
    the entries on which they disagree have near-equal scores, under both scorings."""
    diff = ma != mb
    if not bool(diff.any()):
        return True
    rows, cols = torch.meshgrid(torch.arange(ma.shape[0]), torch.arange(ma.shape[1]), indexing="ij")
    gid = {"row": rows, "matrix": torch.zeros_like(rows), "nm": rows * ma.shape[1] + cols // m}[ranking]
    for g in gid[diff].unique():
        sel = diff & (gid == g)
        for s in (sa, sb):
            v = s[sel].double()
            if float(v.max() - v.min()) > rtol * float(v.abs().max()):
                return False
    return True


def plans_equal(a: list, b: list) -> tuple[bool, bool]:
    """(exactly equal masks, equal up to near-ties) of two ``plan_scores`` results."""
    exact = all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    return exact, exact or all(x[2] == y[2] and near_tie_equal(x[0], y[0], x[1], y[1], x[2]) for x, y in zip(a, b))


def _label(x) -> str:
    return x if isinstance(x, str) else x["name"]


def _study(seed: int = 0, sampler: str = "random") -> optuna.Study:
    if sampler == "random":
        return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))


