"""Wall time and peak resident memory of this process, phase by phase.

The peak is the kernel's high-water mark of the resident set (``VmHWM`` in /proc/self/status),
reset when a phase starts by writing 5 to /proc/self/clear_refs (Linux 4.0 and later), so each
phase reports its own peak, not the process's. Phases may nest: an outer phase's peak is the
largest of its own and its inner phases'. Where /proc is missing (macOS, Windows) the peak is
None and only the time is recorded. At the end of a phase the memory it freed is given back to
the system (host_memory.py), so the next phase starts from what the process really holds.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from .host_memory import resident_bytes, status_bytes, trim_host_memory

_CLEAR = Path("/proc/self/clear_refs")
_open: list[list[int]] = []  # the running peak of every open phase, outermost first


def peak_bytes() -> int | None:
    """The process's resident high-water mark since the last reset, in bytes (None without /proc)."""
    return status_bytes("VmHWM")


def _reset_peak() -> None:
    try:
        _CLEAR.write_text("5")
    except OSError:
        pass


def _fold() -> None:
    """Carry the high-water mark so far into every open phase before it is reset."""
    now = peak_bytes() or 0
    for running in _open:
        running[0] = max(running[0], now)


class PhaseLog:
    """Seconds and memory (MiB) of named phases, in the order they ran: ``phases[name] = {"seconds":
    s, "peak_mib": the phase's resident peak, "end_mib": resident at its end (what it left to the
    next phase)}``. A phase run again (a resumed study) keeps its latest figures."""

    def __init__(self, phases: dict | None = None):
        self.phases: dict[str, dict] = phases if phases is not None else {}

    @contextmanager
    def phase(self, name: str):
        _fold()
        _reset_peak()
        running = [peak_bytes() or 0]
        _open.append(running)
        start = time.perf_counter()
        try:
            yield
        finally:
            _fold()
            _open.remove(running)
            trim_host_memory()  # what the phase freed goes back to the system before the next one
            peak = running[0] if peak_bytes() is not None else None
            end = resident_bytes()
            self.phases[name] = {"seconds": round(time.perf_counter() - start, 1),
                                 "peak_mib": None if peak is None else round(peak / 2**20),
                                 "end_mib": None if end is None else round(end / 2**20)}
