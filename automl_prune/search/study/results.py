"""The final comparison's records (``final.json``), typed: what final.py writes and the report,
the plots and the plan files read. TypedDicts, so the JSON on disk is the records themselves."""

from __future__ import annotations

from typing import Any, TypedDict

SELECTED = "selected_trial"  # the study attribute naming the trial a selection (or the evolution) chose


class ResultRow(TypedDict, total=False):
    """A plan measured held out: a searched plan (``kind`` searched) or a named method at a
    searched plan's target (``kind`` baseline)."""

    kind: str  # searched | baseline
    name: str
    trial: int
    values: list[float]  # the study's objectives, in order
    ppl: float  # held-out perplexity
    sparsity: float  # realised
    target: float  # the polished point's / the baseline's target sparsity
    plan: dict[str, Any]
    named_point: str | None
    selected_by: str  # selection stages | fast objective | first phase
    zero_shot: dict[str, Any]


class SelectionRecord(TypedDict, total=False):
    """A selection's choice (selection.py, or the evolution's: evolution.selection_record)."""

    objective: dict[str, Any]
    selected: int
    fast_best: int
    pool: int
    stages: list[dict[str, Any]]
    generations: int
    searcher: str
    seconds: float | None
    fidelity: dict[str, Any]


class PolishResult(TypedDict, total=False):
    """One polished target sparsity (polish.py)."""

    point: float
    study: str
    trials: int
    new_trials: int
    objective: str
    best: dict[str, Any] | None
    wanda: dict[str, Any] | None
    selection: SelectionRecord
    note: str


class FinalResult(TypedDict, total=False):
    """``final.json``: the held-out rows, the objective's rank correlation, and what chose the plans."""

    rows: list[ResultRow]
    fidelity: dict[str, Any]
    selection: SelectionRecord
    first_phase: SelectionRecord
    polish: list[PolishResult]
    from_earlier_run: bool


def is_polished(row: ResultRow) -> bool:
    """A row of final.json that is a polished plan: a searched row with a target sparsity."""
    return row["kind"] == "searched" and row.get("target") is not None


def polished_rows(final: FinalResult | None) -> list[ResultRow]:
    return [r for r in (final or {}).get("rows", []) if is_polished(r)]


def baseline_ppl(final: FinalResult | None, name: str = "wanda") -> dict:
    """Held-out perplexity of the baseline ``name`` by target sparsity."""
    return {r.get("target"): r["ppl"] for r in (final or {}).get("rows", []) if r["kind"] == "baseline" and r["name"] == name}


def change_vs_baseline(final: FinalResult | None, baseline: str = "wanda") -> list[tuple[float, float]]:
    """(target, % change of held-out perplexity) of each polished plan against ``baseline`` at its target."""
    base = baseline_ppl(final, baseline)
    return sorted((r["target"], 100 * (r["ppl"] / base[r["target"]] - 1)) for r in polished_rows(final) if r["target"] in base)
