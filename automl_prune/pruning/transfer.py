"""A plan and the model it was made for: the check before any work, and the explicit transfer to a
model of another depth or shape. Pure functions over the plan and the model's prunable layers,
given as ``{"<block>.<layer>": (out, in)}`` (``models.adapters.prunable_shapes``).

- :func:`check_plan` refuses a plan whose ``layer_sparsity`` names a layer the model lacks, whose
  per-block list has another length, or whose model record (``PruningPlan.model``) names another
  block count or layer digest;
- :func:`transfer_plan` carries a plan over on request: ``metric`` keeps its method (metric,
  update, refinement, permutation, pattern) at its global target with a uniform allocation;
  ``depth`` also maps its per-layer targets by relative depth and renormalises them so that the
  model prunes exactly ``round(target * prunable weights)`` weights, counted as the masks count.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import get_args

from ..allocation.rules import DEFAULT_BOUNDS, match_target
from ..errors import UserError
from ..metrics.kernel import default_group
from .masks import group_count
from .plan import PlanModel, PlanTransfer, PruningPlan, TransferKind

Shapes = dict[str, tuple[int, int]]
TRANSFER_KINDS = get_args(TransferKind)
TRANSFER_HINT = ("if the plan was made for another model, apply it with --transfer metric (its method at its global "
                 "target, uniform allocation) or --transfer depth (its per-layer targets mapped by relative depth)")
#: SparseGPT's column blocks (a plan without a metric chooses its mask per block of 128 input columns)
SPARSEGPT_BLOCK = 128
_SHOWN = 4  # unknown names listed in a message


def block_count(shapes: Shapes) -> int:
    return 1 + max(int(name.split(".", 1)[0]) for name in shapes)


def layers_digest(shapes: Shapes) -> str:
    """16 hex digits of the sha256 of the sorted layer names and their weight shapes."""
    text = json.dumps(sorted([name, list(shape)] for name, shape in shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_record(name: str, shapes: Shapes) -> PlanModel:
    """The record a plan made for this model carries (``PruningPlan.model``)."""
    return PlanModel(name=name, blocks=block_count(shapes), layers_digest=layers_digest(shapes))


def _describe(record: PlanModel, unnamed: str = "an unnamed model") -> str:
    digest = f", layers {record.layers_digest}" if record.layers_digest else ""
    return f"{record.name or unnamed} ({record.blocks} blocks{digest})"


def check_plan(plan: PruningPlan, shapes: Shapes, name: str | None = None) -> list[str]:
    """Refuse (UserError) a plan that does not fit the model of ``shapes``; returns notes (the plan
    records another ``name`` for a model with the same layers)."""
    n_blocks = block_count(shapes)
    made = plan.model
    if made is not None and (made.blocks != n_blocks or made.layers_digest not in (None, layers_digest(shapes))):
        here = _describe(model_record(name or "", shapes), unnamed="this model")
        raise UserError(f"the plan was made for {_describe(made)}, not for {here}; {TRANSFER_HINT}")
    unknown = [k for k in plan.layer_sparsity if k not in shapes]
    if unknown:
        shown = ", ".join(unknown[:_SHOWN]) + (f" and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else "")
        raise UserError(f"the plan's layer_sparsity names {len(unknown)} layer(s) this model lacks: {shown} (the model has "
                        f"{n_blocks} blocks; layers are named '<block>.<layer>', e.g. '{next(iter(shapes))}'); correct "
                        f"the names, or {TRANSFER_HINT}")
    if isinstance(plan.sparsity, list) and len(plan.sparsity) != n_blocks:
        raise UserError(f"the plan lists {len(plan.sparsity)} per-block sparsities but the model has {n_blocks} blocks; "
                        f"{TRANSFER_HINT}")
    if made is not None and made.name and name and made.name != name:
        return [f"note: the plan was made for {made.name}; {name} has the same layers, so it applies as it is"]
    return []


# ----- transfer -----------------------------------------------------------------------------------
def global_target(plan: PruningPlan) -> float:
    """The plan's global target: its ``sparsity``; for a per-block list, the list's plain mean (the
    blocks of one decoder stack hold equal parameter counts, so it is the weighted mean too)."""
    s = plan.sparsity
    return sum(s) / len(s) if isinstance(s, list) else float(s)


def source_blocks(plan: PruningPlan) -> int | None:
    """The block count of the model the plan was made for: its record's, else its per-block list's
    length, else one past the deepest block its ``layer_sparsity`` names (None: no depth profile)."""
    if plan.model is not None:
        return plan.model.blocks
    if isinstance(plan.sparsity, list):
        return len(plan.sparsity)
    if plan.layer_sparsity:
        return 1 + max(int(k.split(".", 1)[0]) for k in plan.layer_sparsity)
    return None


def depth_profile(plan: PruningPlan, shapes: Shapes, n_source: int) -> dict[str, float]:
    """Each target layer's sparsity read off the plan at the same relative depth: target block j of
    N' sits at source position x = j (N - 1) / (N' - 1) (first on first, last on last; the middle
    for N' = 1), linearly interpolated between source blocks floor(x) and floor(x) + 1 of the same
    layer kind (name in the block). A kind the plan does not set takes its global target (or its
    per-block list's value)."""
    n_target = block_count(shapes)
    out = {}
    for full in shapes:
        block, kind = full.split(".", 1)
        x = int(block) * (n_source - 1) / (n_target - 1) if n_target > 1 else (n_source - 1) / 2
        lo = int(math.floor(x))
        hi, t = min(lo + 1, n_source - 1), x - lo
        out[full] = (1 - t) * plan.sparsity_for(lo, kind, n_source) + t * plan.sparsity_for(hi, kind, n_source)
    return out


def comparison_groups(shape: tuple[int, int], plan: PruningPlan) -> list[tuple[int, int]]:
    """(weights per group, number of groups) of a layer as the plan's masks count it (masks.py:
    ``group_count`` weights of every group)."""
    rows, cols = shape
    group = "column_block" if plan.metric is None else plan.group or default_group(plan.metric)
    if group == "row":
        return [(cols, rows)]
    if group == "matrix":
        return [(rows * cols, 1)]
    full, tail = divmod(cols, SPARSEGPT_BLOCK)
    return [(rows * w, n) for w, n in ((SPARSEGPT_BLOCK, full), (tail, 1)) if n and w]


def pruned_count(shape: tuple[int, int], plan: PruningPlan, sparsity: float) -> int:
    return sum(n * group_count(size, sparsity) for size, n in comparison_groups(shape, plan))


def exact_allocation(raw: dict[str, float], shapes: Shapes, plan: PruningPlan, target: float) -> dict[str, float]:
    """Per-layer sparsities in the proportions of ``raw`` that prune exactly ``round(target * total)``
    weights: ``raw`` scaled to the parameter-weighted ``target`` and clipped to [0, 0.99]
    (``match_target``), each layer's count taken as its masks round it, then the remainder given
    one weight per group at a time to the layers the rounding cost most (taken back from the layers
    it favoured most when over). Exact whenever whole groups can make up the count (per-row groups:
    it is a multiple of the row counts' gcd, as at 50% in the usual shapes), else the nearest count
    they reach (within half the smallest layer's group count). A layer's value is its count per
    group over the group's size, to 10 decimals, which gives back that count exactly
    (``group_count``); a layer whose groups differ in size (SparseGPT's narrower last column block)
    keeps its scaled value and the count it rounds to."""
    names = list(shapes)
    numel = [shapes[n][0] * shapes[n][1] for n in names]
    tiny = 1e-9  # scale mode needs positive values; a layer the plan leaves dense stays (almost) so
    scaled = match_target([max(raw[n], tiny) for n in names], numel, target, bounds=DEFAULT_BOUNDS, mode="scale")
    values = [round(s, 10) for s in scaled]
    groups = [comparison_groups(shapes[n], plan) for n in names]
    counts = [pruned_count(shapes[n], plan, s) for n, s in zip(names, values)]
    lost = [s * size - c for s, size, c in zip(values, numel, counts)]  # what the rounding cost each layer
    per_group = [group_count(g[0][0], s) if len(g) == 1 else None for g, s in zip(groups, values)]  # adjustable
    remainder = round(target * sum(numel)) - sum(counts)
    while remainder:
        step = 1 if remainder > 0 else -1
        movable = [i for i, k in enumerate(per_group)
                   if k is not None and 0 <= k + step <= groups[i][0][0] * DEFAULT_BOUNDS[1]]
        within = [i for i in movable if groups[i][0][1] <= abs(remainder)]
        nearer = [i for i in movable if groups[i][0][1] < 2 * abs(remainder)]  # past the count, but closer to it
        movable = within or nearer
        if not movable:
            break
        i = max(movable, key=lambda i: (step * lost[i], -i))
        per_group[i] += step
        lost[i] -= step * groups[i][0][1]
        remainder -= step * groups[i][0][1]
    return {name: v if k is None else round(k / g[0][0], 10) for name, v, k, g in zip(names, values, per_group, groups)}


def transfer_plan(plan: PruningPlan, shapes: Shapes, kind: str, name: str) -> tuple[PruningPlan, str]:
    """``plan`` carried over to the model of ``shapes`` (named ``name``) by ``kind`` (metric or
    depth), with its ``model`` record set to that model and the transfer recorded; and a line for
    the log. An N:M plan has no allocation: both kinds keep its method and pattern."""
    if kind not in TRANSFER_KINDS:
        raise UserError(f"unknown transfer {kind!r}; choose one of {', '.join(TRANSFER_KINDS)}")
    target = global_target(plan)
    n_source = source_blocks(plan)
    source = plan.model or (PlanModel(blocks=n_source) if n_source else None)
    record = model_record(name, shapes)
    fields = dict(model=record.model_dump(), transfer=PlanTransfer(kind=kind, source=source).model_dump())
    what = f"transfer ({kind}) from {_describe(source) if source else 'an unrecorded model'} to {_describe(record)}: "
    if plan.nm is not None:
        return plan.with_fields(**fields), what + f"{plan.pattern} as it is (an N:M plan has no allocation to map)"
    if kind == "metric" or n_source is None:
        why = "uniform allocation" if kind == "metric" else "uniform allocation (the plan has no per-layer targets)"
        return plan.with_fields(sparsity=target, layer_sparsity={}, **fields), what + f"{plan.describe()} at {target:g}, {why}"
    layers = exact_allocation(depth_profile(plan, shapes, n_source), shapes, plan, target)
    pruned = sum(pruned_count(shapes[n], plan, s) for n, s in layers.items())
    total = sum(r * c for r, c in shapes.values())
    return (plan.with_fields(sparsity=target, layer_sparsity=layers, **fields),
            what + f"per-layer targets by relative depth, {pruned} of {total} weights ({pruned / total:.4%}; "
                   f"target {target:g}: {round(target * total)})")
