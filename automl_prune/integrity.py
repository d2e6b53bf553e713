"""Content hashes of the files the caches keep (statistics, level database): written next to a
file when it is stored and compared when it is read, so that changed bytes (a flipped bit, a
truncated copy, a write cut by a crash) are a cache miss, never a silently different model.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 24  # 16 MiB


def sha256_bytes(data: bytes | bytearray | memoryview) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``, read in chunks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def hash_problem(expected: object, actual: str) -> str | None:
    """Why content hashed to ``actual`` fails a recorded hash ``expected`` (None, or not a string:
    stored before hashes were recorded); None when it passes."""
    if not isinstance(expected, str) or not expected:
        return "no content hash recorded (stored before hashes were)"
    if expected != actual:
        return f"content hash mismatch (recorded sha256 {expected[:16]}..., now {actual[:16]}...)"
    return None


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
