"""Outputs that appear whole or not at all: a file or a folder is written under a temporary name
beside its target (same folder, so the same filesystem) and renamed into place when complete. A
process killed half-way leaves the previous version, or nothing, at the target path, never a part.

Temporary names are ``.<name>.tmp-<pid><suffix>`` (a file keeps its suffix, so writers that go by
it still work) and, for a folder being replaced, ``.<name>.old-<pid>``; those of a process that is
gone are cleared by the next writer of the same target."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator


def _aside(target: Path, kind: str, suffix: str = "") -> Path:
    return target.with_name(f".{target.stem if suffix else target.name}.{kind}-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); once the block ends without an error
    it replaces ``path`` (``os.replace``), otherwise it is removed."""
    path = Path(path)
    tmp = _aside(path, "tmp", path.suffix)
    try:
        yield tmp
        move_into_place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def move_into_place(tmp: Path, path: Path) -> None:
    """The one step that makes a finished file visible (``os.replace``: atomic on one filesystem)."""
    os.replace(tmp, path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``Path.write_text`` that a kill cannot leave half done."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside ``target``; once the block ends without an error it becomes
    ``target``. An existing ``target`` is replaced only then: renamed aside, the new one renamed in,
    the old one deleted. On an error the new folder is removed and ``target`` is left as it was."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clear_stale(target)
    tmp = _aside(target, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists() or target.is_symlink():
        old = _aside(target, "old")
        os.rename(target, old)
    os.rename(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clear_stale(target: Path) -> None:
    """Remove what killed writers of ``target`` left beside it; a previous version renamed aside by
    a writer killed before the new one was renamed in is put back when ``target`` is missing."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(tmp|old)-(\d+)$")
    for p in target.parent.iterdir() if target.parent.is_dir() else ():
        m = pattern.match(p.name)
        if m is None or _alive(int(m.group(2))):
            continue
        if m.group(1) == "old" and not (target.exists() or target.is_symlink()):
            os.rename(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process's own leftovers (an earlier export of the same target)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
