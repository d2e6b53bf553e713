"""A trial worker: model, statistics and dense references loaded once, then any number of
candidates evaluated against them. The Ray workers wrap one of these; nothing here imports Ray."""

from __future__ import annotations

import logging
import os

import torch

from ..study.config import StudyConfig
from ..study.definition import Study
from ..study.outcome import Memo, Outcome
from ..study.state import remember_finished
from .evaluate import evaluate_params
from .levels import open_database
from .setup import load_search

log = logging.getLogger(__name__)


class Worker:
    """Loads what a study scores candidates with (statistics from the on-disk cache the driver
    filled, so a worker reads them instead of recomputing) and evaluates parameter sets."""

    def __init__(self, config: StudyConfig | dict, *, storage: str | None = None, threads: int | None = None):
        self.config = config if isinstance(config, StudyConfig) else StudyConfig.model_validate(config)
        if threads:
            torch.set_num_threads(max(1, int(threads)))
        study = Study.from_config(self.config, url=storage)
        self.objectives = study.objectives
        self.ctx, self.profile, self.space = load_search(study, progress=False)
        self.memo = Memo()
        if storage is not None:
            try:  # values other workers already measured: reuse them for equal candidates
                remember_finished(study.load(), self.memo)
            except Exception as exc:  # noqa: BLE001 - the memo is an optimisation only
                log.warning("worker could not read the study for reuse: %s", exc)

    def evaluate(self, params: dict) -> Outcome:
        if self.ctx.levels is None and getattr(self.space.allocation, "ladders", None) is not None:
            self._open_levels(params)
        outcome = evaluate_params(params, space=self.space, profile=self.profile, ctx=self.ctx, objectives=self.objectives,
                                  memo=self.memo)
        outcome.attrs["worker_pid"] = os.getpid()
        return outcome

    def _open_levels(self, params: dict) -> None:
        """Swap candidates in from the level database the driver built (pruned as usual until then)."""
        try:
            db = open_database(self.ctx, self.space, self.space.decode(params, self.profile), self.config.cache_dir)
        except Exception as exc:  # noqa: BLE001 - the database is an optimisation only
            log.warning("worker: no level database: %s", exc)
            return
        if not db.missing():
            self.ctx.levels = db
