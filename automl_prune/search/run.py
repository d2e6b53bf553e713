"""Run a whole study: load once, search, compare on held-out text, write the outputs."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import yaml

from ..atomic import write_text_atomic
from ..errors import UserError
from ..phase_log import PhaseLog
from ..provenance import versions
from .allocation_phase import run_allocation_phase, selected_trial
from .config import StudyConfig
from .final import final_comparison
from .fingerprint import check_weights
from .lock import LeaseLock, file_lock_for
from .loop import run_searcher
from .polish import check_polish_studies, polish_front
from .outputs import write_outputs
from .selection import run_selection
from .setup import load_search, search_memory
from .state import SearchState, remember_finished
from .storage import check_url, fail_orphans, quiet_ask_warning
from .study import Study

log = logging.getLogger(__name__)


def run_search(config: StudyConfig, out: str | Path, *, progress: bool = True, final: bool = True) -> Path:
    """Search, then the held-out comparison; returns the path of report.md. Resumes an existing study.

    Before anything is written: the storage URL is checked, the study's lock taken (one driver per
    study, lock.py) and the study's fingerprint compared with the config's (fingerprint.py)."""
    out = Path(out)
    study = Study.from_config(config, out)
    if config.storage is not None:
        check_url(study.url)  # a user's URL: refused before the output folder is made
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    file_lock = file_lock_for(study.url, study.name)
    lock = file_lock.acquire() if file_lock is not None else None
    try:
        return _run_locked(study, out, progress=progress, final=final, lock=lock)
    except UserError:
        if made and not (out / "config.yaml").exists():  # refused before anything was written: no folder left behind
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def _run_locked(study: Study, out: Path, *, progress: bool, final: bool, lock) -> Path:
    stored = study.open()
    lease = LeaseLock(stored, study.where).acquire() if lock is None else None
    try:
        return _run_study(study, stored, out, progress=progress, final=final)
    finally:
        if lease is not None:
            lease.release()


def _run_study(definition: Study, study, out: Path, *, progress: bool, final: bool) -> Path:
    config = definition.config
    orphans = fail_orphans(study)
    if orphans:
        log.warning("trials %s were left running by a driver that stopped: marked failed, their candidates queued again",
                    ", ".join(map(str, orphans)))
    check_polish_studies(config, definition.url)
    write_text_atomic(out / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    memory = search_memory(config)  # before the model loads: a worker that cannot fit is refused with the figures
    ctx, profile, space = load_search(definition, progress=progress)
    if memory is not None:
        ctx.info["memory_model"] = memory
    check_weights(study, ctx.info.get("statistics", {}).get("model_fingerprint"), definition.where)
    quiet_ask_warning()
    state = SearchState(config=config, study=study, space=space, profile=profile, objectives=definition.objectives,
                        ctx=ctx, progress=progress)
    remember_finished(study, state.memo)
    phases = PhaseLog(ctx.info["phases"])  # per-phase seconds and peak memory, in meta.json
    start = time.perf_counter()
    log.info("search: %s on the %s executor, %d trials finished so far, budget %s trials / %s s", config.searcher.name,
             config.executor, state.finished(), config.budget.trials, config.budget.timeout)
    with phases.phase("search"):
        evolved = run_searcher(state, url=definition.url).chosen()
    seconds = time.perf_counter() - start
    before = json.loads((out / "meta.json").read_text()) if (out / "meta.json").exists() else {}
    finished = state.finished()
    meta = dict(ctx.info, searcher=config.searcher.model_dump(), directions=state.directions,
                budget=config.budget.model_dump(), finished_trials=finished, stopped_by=stopped_by(config, state.spent()),
                executor=config.executor, versions=versions(), search_seconds=round(seconds, 1), trials_this_run=state.new_trials,
                candidates_per_minute=round(60 * state.new_trials / seconds, 2) if seconds > 0 else None,
                search_seconds_total=running_total(before, "search_seconds", seconds),
                **({} if state.database_seconds is None else {"database_seconds": state.database_seconds}))
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=2, default=str))
    log.info("search: %d trials this run in %.0f s, %d finished in the study (%s)", state.new_trials, seconds, finished,
             meta["stopped_by"])
    selection = evolved
    if config.selection is not None:
        start = time.perf_counter()
        with phases.phase("selection"):
            selection = run_selection(state, chosen=None if evolved is None else evolved["selected"], progress=progress)
        meta["selection_seconds"] = round(time.perf_counter() - start, 1)
        meta["selection_seconds_total"] = running_total(before, "selection_seconds", meta["selection_seconds"])
        write_text_atomic(out / "meta.json", json.dumps(meta, indent=2, default=str))
        if selection:
            log.info("selection: trial %d selected (the fast objective's best: trial %d)", selection["selected"],
                     selection["fast_best"])
    phase, first_phase = None, None
    if config.allocation_search is not None:  # the joint plan's allocation phase, from the plan selected above
        first = selected_trial(study, selection, state.sign)
        start = time.perf_counter()
        with phases.phase("allocation phase"):
            phase, evolved = run_allocation_phase(state, first, definition.url)
        seconds = round(time.perf_counter() - start, 1)
        meta["allocation_phase"] = dict(study=phase.config.study_name, start_trial=first.number, seconds=seconds,
                                        database_seconds=phase.database_seconds, trials_this_run=phase.new_trials,
                                        finished_trials=phase.finished(), stopped_by=stopped_by(phase.config, phase.spent()),
                                        budget=phase.config.budget.model_dump(), searcher=phase.config.searcher.model_dump(),
                                        seconds_total=running_total(before.get("allocation_phase") or {}, "seconds", seconds))
        write_text_atomic(out / "meta.json", json.dumps(meta, indent=2, default=str))
        first_phase = (state, selection, first.number)
        selection = evolved
        log.info("allocation phase: trial %s of %s selected (from trial %d of the first phase)",
                 None if evolved is None else evolved["selected"], phase.config.study_name, first.number)
    result = None
    if not final and (out / "final.json").exists():
        result = json.loads((out / "final.json").read_text())  # --no-final keeps the earlier comparison
        result["from_earlier_run"] = True
    if final:
        start = time.perf_counter()
        with phases.phase("polish"):
            polished = polish_front(state, definition.url)
        if polished:
            meta["polish_seconds"] = round(time.perf_counter() - start, 1)
            meta["polish_seconds_total"] = running_total(before, "polish_seconds", meta["polish_seconds"])
            write_text_atomic(out / "meta.json", json.dumps(meta, indent=2, default=str))
        log.info("final comparison on held-out %s: the chosen plans and the baselines %s", config.heldout.source,
                 ", ".join(config.final.baselines))
        with phases.phase("final comparison"):
            result = final_comparison(phase or state, polished=polished, selection=selection, first_phase=first_phase,
                                      progress=progress)
        write_text_atomic(out / "final.json", json.dumps(result, indent=2, default=str))
        write_text_atomic(out / "meta.json", json.dumps(meta, indent=2, default=str))  # with the final phase's record
    ctx.restore()
    return write_outputs(study, out, [o.name for o in config.objectives], meta, result, origin=config.plan_origin(meta),
                         delivered=None if phase is None else phase.study)


def stopped_by(config: StudyConfig, finished: int) -> str:
    """Why the search loop ended: ``trials`` (the study's trial budget is spent) or ``timeout``
    (this run's seconds were; the study resumes where it stopped)."""
    trials = config.budget.trials
    return "trials" if trials is not None and finished >= trials else "timeout"


def running_total(before: dict, key: str, seconds: float) -> float:
    """``key`` summed over every run of a study: the earlier meta.json's total (or its single
    figure, from before totals were kept) plus this run's ``seconds``."""
    return round(before.get(f"{key}_total", before.get(key, 0.0)) + seconds, 1)
