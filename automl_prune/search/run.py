"""Run a whole study: load once, run its phases in order (search, selection, allocation phase,
polishing, final comparison; phases/), write the outputs."""

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
from .execution.setup import load_search, search_memory
from .outputs.writer import write_outputs
from .phases.allocation import AllocationPhase
from .phases.base import StudyRun
from .phases.final import FinalPhase, earlier_result
from .phases.polish import PolishPhase
from .phases.search import SearchPhase
from .phases.selection import SelectionPhase
from .study.config import StudyConfig
from .study.definition import Study
from .study.fingerprint import check_weights
from .study.lock import LeaseLock, file_lock_for
from .study.state import SearchState, remember_finished
from .study.storage import check_url, fail_orphans, quiet_ask_warning

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


def write_meta(out: Path, meta: dict) -> None:
    """meta.json, written whole (atomic.py): the one writer, after every phase."""
    write_text_atomic(out / "meta.json", json.dumps(meta, indent=2, default=str))


def read_meta(out: Path) -> dict:
    path = out / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


#: the phases of a study run, in order (phases/base.py)
PHASES = (SearchPhase(), SelectionPhase(), AllocationPhase(), PolishPhase(), FinalPhase())


def _run_study(definition: Study, study, out: Path, *, progress: bool, final: bool) -> Path:
    config = definition.config
    orphans = fail_orphans(study)
    if orphans:
        log.warning("trials %s were left running by a driver that stopped: marked failed, their candidates queued again",
                    ", ".join(map(str, orphans)))
    for phase in PHASES:
        phase.check(config, definition.url)
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
    run = StudyRun(definition=definition, study=study, out=out, state=state, final=final, before=read_meta(out))
    phase_log = PhaseLog(ctx.info["phases"])  # per-phase seconds and peak memory, in meta.json
    for phase in PHASES:
        if not phase.applies(run):
            continue
        start = time.perf_counter()
        with phase_log.phase(phase.name):
            phase.run(run)
        run.meta.update(phase.record(run, time.perf_counter() - start))
        write_meta(out, run.meta)
    if not final:
        run.result = earlier_result(out)  # --no-final keeps the earlier comparison
    ctx.restore()
    return write_outputs(study, out, [o.name for o in config.objectives], run.meta, run.result,
                         origin=config.plan_origin(run.meta), delivered=None if run.delivered is None else run.delivered.study)
