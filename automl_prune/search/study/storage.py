"""The study's Optuna storage: its URL, checked before anything is written, opened with heartbeats.

Every storage problem (a malformed URL, an unknown scheme, a missing database driver, an
unreachable server, an unwritable SQLite path) becomes one :class:`UserError` line that names the
URL with its password masked. The storage records a heartbeat for every running trial (Optuna's
``heartbeat_interval`` / ``grace_period``); a trial whose driver died is failed as stale and its
candidate queued again once (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import warnings
from pathlib import Path
from typing import Iterator

import optuna

from ...errors import UserError
from .config import StudyConfig

HEARTBEAT_S = 20  # a running trial's heartbeat period
GRACE_S = 90  # a running trial without a heartbeat for this long is stale
MAX_RETRY = 1  # a stale trial's candidate is queued again this many times
STALE = "stale: its driver stopped while the trial ran"  # the failed trial's error attribute


def storage_url(config: StudyConfig, out: Path) -> str:
    """The study's Optuna storage: the config's URL, else SQLite in the output folder."""
    return config.storage or f"sqlite:///{(Path(out) / 'study.db').resolve()}"


def study_name(config: StudyConfig) -> str:
    return config.study_name or "automl-prune"


def masked(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and logs)."""
    return re.sub(r"(//[^:/@]+:)[^@/]*@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for other storages and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def check_url(url: str) -> None:
    """Refuse a URL that cannot name an Optuna storage, before anything is created for it."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    shown = masked(url)
    hint = "give an SQLAlchemy URL such as sqlite:///study.db or postgresql://user:password@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise UserError(f"--storage {shown!r} is not a database URL ({exc}); {hint}") from None
    try:
        dialect = parsed.get_dialect()
        load = getattr(dialect, "import_dbapi", None) or getattr(dialect, "dbapi", None)
        if callable(load) and parsed.get_backend_name() != "sqlite":
            load()  # the Python driver module (psycopg2, pymysql, ...)
    except NoSuchModuleError:
        raise UserError(f"--storage {shown!r}: unknown database kind {parsed.drivername!r}; {hint}") from None
    except ImportError as exc:
        raise UserError(f"--storage {shown!r}: the Python driver for {parsed.drivername!r} is not installed ({exc}); "
                        "install it with pip (e.g. psycopg2-binary for postgresql, pymysql for mysql+pymysql)") from None
    path = sqlite_path(url)
    if path is not None:
        folder = path.parent if str(path.parent) else Path(".")
        if not folder.is_dir():
            raise UserError(f"--storage {shown!r}: the folder {folder} does not exist; create it or give another path")
        probe = path if path.exists() else folder
        if not os.access(probe, os.W_OK):
            raise UserError(f"--storage {shown!r}: {probe} is not writable; give a path you can write to")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The storage behind ``url``, with trial heartbeats and a retry of stale trials."""
    check_url(url)
    callback = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        kwargs = ({"heartbeat_stale_trial_callback": callback(max_retry=MAX_RETRY)} if callback is not None else
                  {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)})
        try:
            return optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every storage failure becomes one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot open the Optuna storage {masked(url)!r}: {first}") from None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat in the storage while the block runs (a killed driver's trial
    then goes stale and is failed and retried on the next run)."""
    try:
        from optuna.storages._heartbeat import get_heartbeat_thread
    except ImportError:  # an Optuna without it: the lock still fails orphaned trials on resume
        yield
        return
    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def quiet_ask_warning() -> None:
    """Optuna warns that heartbeats are meant for ``Study.optimize``; this study records them
    around its own ask/tell loop (:func:`heartbeat`), so the warning says nothing here."""
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def fail_orphans(study: optuna.Study) -> list[int]:
    """Fail every RUNNING trial of ``study`` (its driver was killed while the trial ran) and queue
    its candidate again once, as the heartbeat's stale-trial callback does. Called by the driver
    that holds the study's lock (lock.py), so no live process can be running them, whatever their
    last heartbeat. Returns the numbers of the trials failed."""
    storage = study._storage
    callback = storage.get_heartbeat_stale_trial_callback() if hasattr(storage, "get_heartbeat_stale_trial_callback") else None
    failed = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        try:
            storage.set_trial_user_attr(t._trial_id, "error", STALE)
            if not storage.set_trial_state_values(t._trial_id, state=optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(t.number)
        if callback is not None:
            frozen = copy.deepcopy(storage.get_trial(t._trial_id))
            frozen.user_attrs.pop("error", None)  # the retry starts clean
            callback(study, frozen)
    return failed
