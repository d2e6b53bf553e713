"""One driver per study: a lock held for the whole run (search, selection, comparison, report).

- SQLite storage (the default, ``<out>/study.db``): an exclusive ``flock`` on ``<db>.lock`` beside
  the database. The kernel releases it when the process ends, however it ends (kill -9 included),
  so a stale lock never blocks a resume.
- Any other storage (PostgreSQL, MySQL): a lease row in the storage, the study's ``driver_lease``
  attribute (holder pid and host, a token, an expiry), renewed every ``LEASE_RENEW_S`` by a
  thread; a lease not renewed for ``LEASE_S`` has expired and is taken over.

A second driver is refused with one line naming the holder's pid and host.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

from ...errors import UserError
from .storage import masked, sqlite_path

LEASE_S = 120
LEASE_RENEW_S = 30
LEASE_ATTR = "driver_lease"


def holder_text(info: dict) -> str:
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')}"


def _refusal(what: str, info: dict) -> UserError:
    return UserError(f"{what} is being run by another automl-prune driver ({holder_text(info)}, since "
                     f"{info.get('since', '?')}); wait for it to finish, or stop it, or use another --out folder")


class FileLock:
    """An exclusive ``flock`` on ``path`` whose content says who holds it."""

    def __init__(self, path: Path, what: str):
        self.path, self.what, self._fd = Path(path), what, None

    def acquire(self) -> "FileLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                info = {}
            os.close(fd)
            raise _refusal(self.what, info) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


class LeaseLock:
    """A lease in the study's attributes of a server storage, renewed by a daemon thread.
    ``clock`` and ``sleep`` (default ``time.time``, ``time.sleep``) are this lease's own, for tests."""

    SETTLE_S = 0.5  # two drivers that wrote at once: the last write wins, the other sees it after this

    def __init__(self, study, what: str, *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.study, self.what = study, what
        self.token = uuid.uuid4().hex
        self._clock, self._sleep = clock, sleep
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self) -> None:
        self.study.set_user_attr(LEASE_ATTR, {**_me(), "token": self.token, "expires": self._clock() + LEASE_S})

    def acquire(self) -> "LeaseLock":
        held = self.study.user_attrs.get(LEASE_ATTR) or {}
        if held.get("token") and held.get("expires", 0) > self._clock():
            raise _refusal(self.what, held)
        self._write()
        self._sleep(self.SETTLE_S)
        if (self.study.user_attrs.get(LEASE_ATTR) or {}).get("token") != self.token:
            raise _refusal(self.what, self.study.user_attrs.get(LEASE_ATTR) or {})
        self._thread = threading.Thread(target=self._renew, name="automl-prune-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW_S):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a busy server delays a renewal; the lease outlasts a few
                pass

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            if (self.study.user_attrs.get(LEASE_ATTR) or {}).get("token") == self.token:
                self.study.set_user_attr(LEASE_ATTR, {})
        except Exception:  # noqa: BLE001 - an unreleased lease expires by itself
            pass


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def file_lock_for(url: str, name: str) -> FileLock | None:
    """The file lock of a study in SQLite storage (None for a server storage: use a lease)."""
    path = sqlite_path(url)
    if path is None:
        return None
    return FileLock(path.with_name(path.name + ".lock"), f"the study storage {masked(url)} (study {name!r})")
