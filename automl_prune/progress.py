"""Progress that reaches a person on a terminal and a log file alike.

On a terminal :func:`progress_bar` is a tqdm bar. Off a terminal (output redirected, a batch job, CI)
tqdm would print nothing, so it is a bar that writes whole lines instead: one when a stage starts
(``leave=True`` stages), one every ``AUTOML_PRUNE_PROGRESS_SECONDS`` (default 20) while it runs, with
the count and the elapsed time, and one when it ends.
"""

from __future__ import annotations

import os
import sys
import time

from tqdm.std import tqdm

DEFAULT_SECONDS = 20.0


def log_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("AUTOML_PRUNE_PROGRESS_SECONDS", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


class LineProgress(tqdm):
    """A tqdm bar that prints one full line per refresh (at most every ``mininterval`` seconds)."""

    def __init__(self, *args, leave: bool = True, **kwargs):
        kwargs.setdefault("file", sys.stderr)
        kwargs.update(mininterval=log_interval(), miniters=1, dynamic_ncols=False, ncols=100, ascii=True)
        self._announce = leave
        self._said: str | None = None
        self._last_line = -float("inf")
        super().__init__(*args, leave=leave, **kwargs)

    def _line(self) -> str:
        d = self.format_dict
        done, total = d["n"], d["total"]
        count = f"{done}/{total}" if total else f"{done}"
        post = f" ({d['postfix']})" if d.get("postfix") else ""
        return f"[{time.strftime('%H:%M:%S')}] {d['prefix'] or 'progress'}: {count} {d['unit']}{post}, {d['elapsed']:.0f} s"

    def display(self, msg=None, pos=None, force: bool = False):
        if msg == "":  # tqdm clearing a transient bar
            return True
        now = time.time()
        first = self._said is None
        if not force:
            if first and not self._announce and now - getattr(self, 'start_t', now) < self.mininterval:
                return True  # a transient stage says nothing until it has run for an interval
            if not first and now - self._last_line < self.mininterval:
                return True  # hand-driven refreshes (bar.n = ...; refresh()) are rate-limited too
        line = self._line()
        if line != self._said:
            self.fp.write(line + "\n")
            self.fp.flush()
            self._said, self._last_line = line, now
        return True

    def close(self):
        if self.disable:
            return
        if self.leave or time.time() - getattr(self, 'start_t', time.time()) >= self.mininterval:
            self.display(force=True)
        self.disable = True  # tqdm's own close would clear or repeat the line
        with self._lock:
            try:
                self._instances.remove(self)
            except (KeyError, AttributeError):
                pass


def on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable=None, *, enabled: bool = True, leave: bool = True, **kwargs):
    """A progress bar over ``iterable`` (or one updated by hand with ``total=``): tqdm on a terminal,
    whole log lines elsewhere, nothing when ``enabled`` is false."""
    if not enabled:
        return tqdm(iterable, disable=True, **kwargs)
    if on_terminal():
        return tqdm(iterable, leave=leave, **kwargs)
    return LineProgress(iterable, leave=leave, **kwargs)
