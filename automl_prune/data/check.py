"""Open a text source before anything expensive loads, and name the source in every error about it.

    check_source("calib.jsonl", "calibration")            # UserError unless it holds some text
    check_source(config.heldout.source, "evaluation", role="held-out", data_dir=config.data_dir)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from automl_prune.data.sources import Corpus, Purpose, resolve_corpus
from automl_prune.errors import UserError


@contextmanager
def naming_source(source: str, role: str) -> Iterator[None]:
    """A UserError raised inside says which source it is about: ``"<role> source '<source>': ..."``,
    or ``"<role> source: ..."`` when the message already quotes the source (a path, a dataset id).
    The error keeps its class (a MissingPackageError stays one)."""
    try:
        yield
    except UserError as e:
        text, quoted = str(e), f"'{source}'"
        head = f"{role} source"
        if not text.startswith(head):
            e.args = (f"{head}{'' if quoted in text else ' ' + quoted}: {text}",)
        raise


def check_source(source: str | os.PathLike, purpose: Purpose, *, role: str | None = None,
                 data_dir: str | os.PathLike | None = None, split: str | None = None,
                 text_field: str | None = None) -> Corpus:
    """Open ``source`` for ``purpose`` as the windows functions will, without a tokenizer, and check
    that it can be used: it exists (file, folder, offline copy under ``data_dir``, installed package
    or hub dataset), it parses, its records have the text field, and at least one document holds
    text. Raises a UserError that names the source (``role``, default ``purpose``: "probe",
    "held-out", ...) and says how to fix it; returns the corpus.

    The windows functions open the source again; for local files and the offline copies that is a
    cheap re-read, and hub datasets come back from the datasets cache, memory-mapped.
    """
    source = os.fspath(source)
    with naming_source(source, role or purpose):
        corpus = resolve_corpus(source, purpose, data_dir=data_dir, split=split, text_field=text_field)
        if not any(isinstance(d, str) and d.strip() for d in corpus.documents):
            raise UserError(_no_text(corpus))
    return corpus


def _no_text(corpus: Corpus) -> str:
    """What is wrong with a corpus without text, and what to do."""
    n, field = len(corpus.documents), corpus.info.get("text_field")
    what = {0: "it has no documents", 1: "its only document is empty"}.get(n, f"all its {n} documents are empty")
    if field:
        return (f"no text: {what} in field '{field}'; fill the field, or pass text_field naming the field that "
                "holds the text.")
    return f"no text: {what}; fill it with text."
