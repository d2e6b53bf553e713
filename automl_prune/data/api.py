"""Calibration and evaluation windows from a named source."""

from __future__ import annotations

import os
from typing import Any

from automl_prune.data.check import naming_source
from automl_prune.data.sources import Corpus, resolve_corpus
from automl_prune.data.windows import (DocumentTokens, TokenWindows, document_positions, make_encoder, sample_documents,
                                       sample_stream, split_stream, stack_windows, stream_positions, windows_sha256)
from automl_prune.errors import UserError

# Every info dict carries all of these keys (None where a key does not apply), in this order.
INFO_KEYS = ("purpose", "source", "dataset", "config", "data_files", "path", "files", "sha256", "fingerprint",
             "split", "text_field", "document_range", "documents", "sampler", "joiner", "seed", "seqlen",
             "nsamples", "n_windows", "window_cap", "bos", "bos_token_id", "tokenizer", "tokens_available",
             "windows_sha256")


def calibration_windows(source: str | os.PathLike, tokenizer: Any, *, nsamples: int, seqlen: int, seed: int = 0,
                        data_dir: str | os.PathLike | None = None, split: str | None = None,
                        text_field: str | None = None, bos: bool = False) -> TokenWindows:
    """``nsamples`` random windows of ``seqlen`` tokens for calibration (Wanda/SparseGPT sampling).

    ``source``: "c4", "wikitext2" (train split, hub only), "wiki-offline", a local file or
    folder, or a Hugging Face dataset id (``ID`` or ``ID:CONFIG``). The documents sampler (a
    random document longer than the window, then a random offset) is used for C4, and for other
    sources with several documents of which one is long enough; otherwise random offsets into
    the joined token stream. With ``bos`` each window is BOS + ``seqlen - 1`` text tokens.
    """
    source = os.fspath(source)
    _check_positive(seqlen=seqlen, nsamples=nsamples)
    encode = make_encoder(tokenizer, bos)
    length = _text_length(seqlen, bos)
    with naming_source(source, "calibration"):
        corpus = resolve_corpus(source, "calibration", data_dir=data_dir, split=split, text_field=text_field)
        tokens = DocumentTokens(corpus.documents, encode)
        sampler = _sampler(corpus, tokens, length)
        if sampler == "documents":
            windows, available = sample_documents(tokens, nsamples=nsamples, length=length, seed=seed), None
        else:
            stream = encode(corpus.joiner.join(corpus.documents))
            windows, available = sample_stream(stream, nsamples=nsamples, length=length, seed=seed), stream.numel()
    return _finish(windows, tokenizer, corpus, purpose="calibration", source=source, sampler=sampler, seed=seed,
                   seqlen=seqlen, nsamples=nsamples, bos=bos, tokens_available=available)


def fresh_windows(source: str | os.PathLike, tokenizer: Any, *, nsamples: int, seqlen: int, seed: int,
                  avoid: list[dict], data_dir: str | os.PathLike | None = None, split: str | None = None,
                  text_field: str | None = None, bos: bool = False) -> TokenWindows:
    """``nsamples`` calibration-domain windows that overlap none of the windows drawn by the
    sampler settings in ``avoid`` (each ``{nsamples, seqlen, seed}`` of the same source: the
    calibration and probe windows), nor each other: what a selection stage reads, so a plan is
    never chosen on text its statistics or its fast objective saw. Same sampler as
    :func:`calibration_windows`; a draw that overlaps is drawn again."""
    source = os.fspath(source)
    _check_positive(seqlen=seqlen, nsamples=nsamples)
    encode = make_encoder(tokenizer, bos)
    length = _text_length(seqlen, bos)
    with naming_source(source, "calibration"):
        corpus = resolve_corpus(source, "calibration", data_dir=data_dir, split=split, text_field=text_field)
        tokens = DocumentTokens(corpus.documents, encode)
        sampler = _sampler(corpus, tokens, length)
        for a in avoid:
            other = _sampler(corpus, tokens, _text_length(a["seqlen"], bos))
            if other != sampler:
                raise UserError(f"windows of {seqlen} tokens of {source} are drawn by the {sampler} sampler but "
                                f"those of {a['seqlen']} tokens by the {other} sampler, so they cannot be kept apart; "
                                "use the calibration's seqlen for the selection windows")
        if sampler == "documents":
            taken = [(d, st, _text_length(a["seqlen"], bos)) for a in avoid
                     for d, st in document_positions(tokens, nsamples=a["nsamples"],
                                                     length=_text_length(a["seqlen"], bos), seed=a["seed"])]
            positions = document_positions(tokens, nsamples=nsamples, length=length, seed=seed, exclude=taken)
            windows, available = [tokens[d][st:st + length] for d, st in positions], None
        else:
            stream = encode(corpus.joiner.join(corpus.documents))
            taken = [(st, _text_length(a["seqlen"], bos)) for a in avoid
                     for st in stream_positions(stream.numel(), nsamples=a["nsamples"],
                                                length=_text_length(a["seqlen"], bos), seed=a["seed"])]
            starts = stream_positions(stream.numel(), nsamples=nsamples, length=length, seed=seed, exclude=taken)
            windows, available = [stream[st:st + length] for st in starts], stream.numel()
    return _finish(windows, tokenizer, corpus, purpose="selection", source=source, sampler=sampler, seed=seed,
                   seqlen=seqlen, nsamples=nsamples, bos=bos, tokens_available=available)


def evaluation_windows(source: str | os.PathLike, tokenizer: Any, *, seqlen: int, max_windows: int | None = None,
                       data_dir: str | os.PathLike | None = None, split: str | None = None,
                       text_field: str | None = None, bos: bool = False) -> TokenWindows:
    """Non-overlapping windows of ``seqlen`` tokens over the held-out text (perplexity protocol).

    The documents are joined ("\\n\\n"; " " for C4 as in Wanda), tokenized once and cut from the
    start; the tail is dropped. "c4" is its held-out part, capped at 256 windows as in Wanda;
    "wikitext2" is the test split; "wiki-offline" its last 20%; a Hugging Face id defaults to
    the "test" split. ``max_windows`` keeps only the first windows.
    """
    source = os.fspath(source)
    _check_positive(seqlen=seqlen, max_windows=max_windows)
    encode = make_encoder(tokenizer, bos)
    length = _text_length(seqlen, bos)
    with naming_source(source, "evaluation"):
        corpus = resolve_corpus(source, "evaluation", data_dir=data_dir, split=split, text_field=text_field)
        stream = encode(corpus.joiner.join(corpus.documents))
        limits = [n for n in (max_windows, corpus.window_cap) if n is not None]
        windows = split_stream(stream, length=length, max_windows=min(limits, default=None))
    return _finish(windows, tokenizer, corpus, purpose="evaluation", source=source, sampler="stream", seed=None,
                   seqlen=seqlen, nsamples=None, bos=bos, tokens_available=stream.numel())


def _sampler(corpus: Corpus, tokens: DocumentTokens, length: int) -> str:
    """The corpus's sampler; ``auto``: documents when there are several and one is longer than a window."""
    if corpus.sampler != "auto":
        return corpus.sampler
    return "documents" if len(tokens) > 1 and tokens.any_longer_than(length) else "stream"


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{name} must be a positive integer, got {value!r}.")


def _text_length(seqlen: int, bos: bool) -> int:
    """Text tokens per window: ``seqlen``, or ``seqlen - 1`` when a BOS token leads each window."""
    if bos and seqlen < 2:
        raise UserError(f"seqlen must be at least 2 with bos=True (BOS + text), got {seqlen}.")
    return seqlen - 1 if bos else seqlen


def _finish(windows: list, tokenizer: Any, corpus: Corpus, *, sampler: str, bos: bool, **info: Any) -> TokenWindows:
    """Stack the windows and record their provenance."""
    bos_token_id = tokenizer.bos_token_id if bos else None
    input_ids = stack_windows(windows, bos_token_id)
    record = dict.fromkeys(INFO_KEYS)
    record.update(corpus.info)
    record.update(info, sampler=sampler, bos=bos, bos_token_id=bos_token_id, documents=len(corpus.documents),
                  joiner=corpus.joiner if sampler == "stream" else None, window_cap=corpus.window_cap,
                  n_windows=int(input_ids.shape[0]), tokenizer=getattr(tokenizer, "name_or_path", None)
                  or type(tokenizer).__name__, windows_sha256=windows_sha256(input_ids))
    return TokenWindows(input_ids=input_ids, info=record)
