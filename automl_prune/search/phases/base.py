"""The phases of a study run and what they share.

A study runs its phases in order (run.py): the search, the selection, the allocation phase, the
polishing and the final comparison. Each is a :class:`Phase`: it checks its part of the config
before the model loads (``check``), says whether this run needs it (``applies``), runs on the
run's state (``run``) and reports its own timing and counts for meta.json (``record``). The runner
times each phase, records its memory (phase_log.py) and writes meta.json after it (the one writer
of meta.json: run.write_meta)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna

from ..searchers.base import Searcher
from ..study.config import StudyConfig
from ..study.definition import Study
from ..study.results import FinalResult, PolishResult, SelectionRecord
from ..study.state import SearchState


@dataclass
class StudyRun:
    """One run of a study: its definition and stored study, the loaded search state, and what the
    phases hand on to each other (the searcher, the selection, the allocation phase, the polished
    points, the final comparison)."""

    definition: Study
    study: optuna.Study
    out: Path
    state: SearchState
    final: bool = True
    before: dict = field(default_factory=dict)  # the previous run's meta.json (running totals)
    meta: dict = field(default_factory=dict)
    searcher: Searcher | None = None
    selection: SelectionRecord | None = None  # the plan chosen so far (the searcher's own, then the selection's)
    delivered: SearchState | None = None  # the allocation phase's state, whose selected plan is delivered
    first_phase: tuple | None = None  # (state, selection, start trial) of the first phase, under an allocation phase
    polished: list[PolishResult] = field(default_factory=list)
    result: FinalResult | None = None

    @property
    def config(self) -> StudyConfig:
        return self.definition.config

    @property
    def url(self) -> str:
        return self.definition.url

    @property
    def progress(self) -> bool:
        return self.state.progress


class Phase:
    """One step of a study run (see the module's docstring)."""

    name = "phase"  # its label in the log and in meta.json's "phases"

    def check(self, config: StudyConfig, url: str) -> None:
        """Refuse a config this phase cannot run, before the model is loaded (default: nothing to check)."""

    def applies(self, run: StudyRun) -> bool:
        return True

    def run(self, run: StudyRun) -> None:
        raise NotImplementedError

    def record(self, run: StudyRun, seconds: float) -> dict:
        """The entries this phase adds to meta.json, given its ``seconds`` in this run."""
        return {}


def stopped_by(config: StudyConfig, finished: int) -> str:
    """Why the search loop ended: ``trials`` (the study's trial budget is spent) or ``timeout``
    (this run's seconds were; the study resumes where it stopped)."""
    trials = config.budget.trials
    return "trials" if trials is not None and finished >= trials else "timeout"


def running_total(before: dict, key: str, seconds: float) -> float:
    """``key`` summed over every run of a study: the earlier meta.json's total (or its single
    figure, from before totals were kept) plus this run's ``seconds``."""
    return round(before.get(f"{key}_total", before.get(key, 0.0)) + seconds, 1)
