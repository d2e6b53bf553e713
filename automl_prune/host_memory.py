"""Host memory freed by the process, given back to the system.

glibc keeps the chunks a process frees for its own later use and returns them to the system only
from the top of its heap. A search frees and allocates tensors of many sizes per candidate (scores,
masks, errors, activations: most under glibc's mmap threshold once it has grown to 32 MiB), and the
freed chunks it cannot reuse pile up: the resident set grows candidate by candidate though nothing
is kept. Measured on the quickstart (SmolLM2-135M, a cold run): 9.1 GiB after 49 trials where the
candidates hold about 3 GiB; one ``malloc_trim(0)`` in that process brought it from 9.4 to 2.8 GiB.

Trimming is not free: the pages given back fault in again, zeroed, when next used (measured here:
2 GB of per-layer-sized tensors reallocated cost 0.43 s kept, 3.4 s trimmed in between). So a
search trims only when the resident set has grown by ``SLACK_BYTES`` since the last trim
(``release_growth``, after every candidate), which bounds what glibc may hold freed at that slack
(counted by the memory model) for a trim every few dozen candidates; a phase's end and each
offloaded block trim at once (``trim_host_memory``; block-streamed runs: a tiny 32-block Llama's
capture from disk held +491 MiB above the loaded model without it). Not glibc: nothing to do.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

#: how far the resident set may grow past what it was after the last trim (``$AUTOML_PRUNE_MALLOC_SLACK_MB``)
SLACK_BYTES = int(float(os.environ.get("AUTOML_PRUNE_MALLOC_SLACK_MB", 1024)) * 2**20)
_STATUS = Path("/proc/self/status")
_after_trim: list[int] = []  # the resident set right after the last trim


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_trim()


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in bytes (None without /proc)."""
    try:
        found = re.search(rf"{field}:\s+(\d+)\s+kB", _STATUS.read_text())
    except OSError:
        return None
    return None if found is None else int(found.group(1)) * 1024


def resident_bytes() -> int | None:
    """The process's resident set now, in bytes (None without /proc)."""
    return status_bytes("VmRSS")


def trim_host_memory() -> None:
    """Give the memory freed since the last call back to the system (glibc's ``malloc_trim``)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
        _after_trim[:] = [resident_bytes() or 0]


def release_growth(slack: int | None = None) -> bool:
    """``trim_host_memory`` when the resident set has grown by more than ``slack`` (default
    ``SLACK_BYTES``) since the last trim; True when it trimmed."""
    if _MALLOC_TRIM is None:
        return False
    now = resident_bytes()
    if now is None or (_after_trim and now <= _after_trim[0] + (SLACK_BYTES if slack is None else slack)):
        return False
    trim_host_memory()
    return True
