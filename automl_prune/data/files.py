"""Documents from local text files: ``.txt``, ``.jsonl``, ``.json``, or a folder of them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from automl_prune.errors import UserError

SUFFIXES = (".txt", ".jsonl", ".json")
TEXT_FIELDS = ("text", "content", "extract")


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pick_text_field(keys: Any, text_field: str | None, where: str) -> str:
    """The given ``text_field`` if present, else the first of ``TEXT_FIELDS`` found in ``keys``."""
    keys = list(keys)
    if text_field is not None:
        if text_field not in keys:
            raise UserError(f"{where} has no field '{text_field}' (fields: {', '.join(map(str, keys))}); "
                            "pass an existing text_field.")
        return text_field
    for name in TEXT_FIELDS:
        if name in keys:
            return name
    raise UserError(f"{where} has none of the text fields {', '.join(TEXT_FIELDS)} (fields: "
                    f"{', '.join(map(str, keys))}); pass text_field to choose one.")


def _texts(records: list[Any], text_field: str | None, where: str) -> tuple[list[str], str | None]:
    """Texts from a list of strings or of JSON objects; returns (texts, field used)."""
    if all(isinstance(r, str) for r in records):
        return list(records), None
    if not all(isinstance(r, dict) for r in records):
        raise UserError(f"{where} must hold strings or JSON objects with a text field, not a mix of other values.")
    name = pick_text_field(records[0].keys(), text_field, f"{where} (first record)")
    texts = []
    for k, record in enumerate(records):
        value = record.get(name)
        if not isinstance(value, str):
            raise UserError(f"{where}: record {k} has no text in field '{name}'; "
                            "fix the file or pass another text_field.")
        texts.append(value)
    return texts, name


def read_file(path: Path, text_field: str | None = None) -> tuple[list[str], str | None]:
    """Documents of one file and the text field used (``None`` for plain text and string lists).

    ``.txt`` is one document; ``.jsonl`` holds one JSON object per line; ``.json`` holds a list
    of strings or objects, or a dict whose values (in sorted key order) are strings or objects.
    """
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"cannot read text from '{path}': supported files are {', '.join(SUFFIXES)} "
                        "or a folder of them.")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read '{path}' as UTF-8 text ({type(e).__name__}: {e}); check the file.") from None
    if suffix == ".txt":
        return [raw], None
    try:
        if suffix == ".jsonl":
            records = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            data = json.loads(raw)
            records = [data[k] for k in sorted(data)] if isinstance(data, dict) else data
    except json.JSONDecodeError as e:
        raise UserError(f"'{path}' is not valid {suffix[1:].upper()}: {e}; fix the file.") from None
    if not isinstance(records, list) or not records:
        raise UserError(f"'{path}' holds no documents; a {suffix} source needs a non-empty list of records.")
    return _texts(records, text_field, f"'{path}'")


def read_path(path: Path, text_field: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """Documents of a file or of every supported file under a folder (recursive, sorted).

    Returns the documents and provenance: path, sha256 (of the file, or of the sorted list of
    relative names and file hashes for a folder), file count and text field.
    """
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not files:
            raise UserError(f"folder '{path}' contains no {', '.join(SUFFIXES)} files; point the source at text files.")
    else:
        files = [path]
    documents: list[str] = []
    fields: set[str] = set()
    manifest = hashlib.sha256()
    for file in files:
        texts, name = read_file(file, text_field)
        documents.extend(texts)
        if name:
            fields.add(name)
        if file != path:
            manifest.update(f"{file.relative_to(path).as_posix()}\t{file_sha256(file)}\n".encode())
    info = {"path": str(path), "sha256": file_sha256(path) if path.is_file() else manifest.hexdigest(),
            "files": len(files), "text_field": ",".join(sorted(fields)) or None}
    return documents, info
