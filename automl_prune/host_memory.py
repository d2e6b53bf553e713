"""Host memory freed by the process, given back to the system.

glibc keeps the chunks a process frees for its own later use and returns them to the system only
from the top of its heap. A search frees and allocates tensors of many sizes per candidate (scores,
masks, errors, activations: most under glibc's mmap threshold once it has grown to 32 MiB), so the
freed chunks pile up between longer-lived ones and the resident set grows candidate by candidate
though nothing is kept: measured on the quickstart (SmolLM2-135M), 9.1 GiB after 80 trials where
the candidates hold 3 GiB; one ``malloc_trim(0)`` in that process brought it from 9.4 to 2.8 GiB.
``trim_host_memory`` (after every candidate, at the end of every phase, after each offloaded block)
keeps the resident set at what is held plus one candidate's work (block-streamed runs: a tiny
32-block Llama's capture from disk held +491 MiB above the loaded model without it). Not glibc:
nothing to do.
"""

from __future__ import annotations

import ctypes


def _libc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _libc_trim()


def trim_host_memory() -> None:
    """Give the memory freed since the last call back to the system (glibc's ``malloc_trim``)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
