"""Token windows and the samplers that cut them from text (Wanda/SparseGPT protocols).

Every sampler draws from a private ``random.Random(seed)``, which yields exactly the numbers
that the reference code gets from ``random.seed(seed)`` and the module-level functions, without
touching the global random state.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from automl_prune.errors import UserError

Encoder = Callable[[str], torch.Tensor]


@dataclass
class TokenWindows:
    """Token windows for calibration or evaluation, with their provenance.

    ``input_ids`` has shape ``(n_windows, seqlen)``. ``info`` is JSON-serialisable and records
    where the text came from and how the windows were cut; ``info["windows_sha256"]`` is the
    sha256 of the ``input_ids`` bytes, so two runs can check they used the same windows.
    """

    input_ids: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def make_encoder(tokenizer: Any, bos: bool) -> Encoder:
    """Return ``text -> 1-D LongTensor of token ids``.

    Without ``bos`` the tokenizer is called as the reference code calls it (``tokenizer(text,
    return_tensors='pt')``, so its default special tokens are kept). With ``bos`` the text is
    tokenized without special tokens: the BOS token is put in front of each window later.
    """
    if bos and getattr(tokenizer, "bos_token_id", None) is None:
        raise UserError("bos=True needs a tokenizer with a BOS token, but this tokenizer has none; "
                        "drop the bos option.")
    special = {"add_special_tokens": False} if bos else {}

    def encode(text: str) -> torch.Tensor:
        return tokenizer(text, return_tensors="pt", **special).input_ids[0]

    return encode


class DocumentTokens:
    """Token ids of each document, tokenized on first use and then kept."""

    def __init__(self, documents: Sequence[str], encode: Encoder):
        self.documents = documents
        self.encode = encode
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, i: int) -> torch.Tensor:
        if i not in self._cache:
            self._cache[i] = self.encode(self.documents[i])
        return self._cache[i]

    def any_longer_than(self, length: int) -> bool:
        """Whether some document has more than ``length`` tokens (tokenizes until one is found)."""
        return any(self[i].numel() > length for i in range(len(self)))


def sample_documents(tokens: DocumentTokens, *, nsamples: int, length: int, seed: int) -> list[torch.Tensor]:
    """Wanda/SparseGPT ``get_c4``: a random document longer than ``length``, then a random offset.

    The random draws and the windows are those of the reference loop, which re-tokenizes the
    drawn document on every draw; here each document is tokenized at most once.
    """
    return [tokens[d][s:s + length] for d, s in document_positions(tokens, nsamples=nsamples, length=length, seed=seed)]


def document_positions(tokens: DocumentTokens, *, nsamples: int, length: int, seed: int,
                       exclude: Sequence[tuple[int, int, int]] = ()) -> list[tuple[int, int]]:
    """(document, start) of each window :func:`sample_documents` draws. With ``exclude`` (document,
    start, length of windows drawn for something else), a draw that overlaps one of them, or an
    earlier window of this call, is drawn again: fresh windows disjoint from those."""
    if not tokens.any_longer_than(length):
        raise UserError(f"no document is longer than {length} tokens, so no calibration window fits; "
                        "use a shorter seqlen or a source with longer documents.")
    rng = random.Random(seed)
    fresh = _Fresh([((d,), s, n) for d, s, n in exclude], nsamples, length)
    out: list[tuple[int, int]] = []
    while len(out) < nsamples:
        while True:
            doc = rng.randint(0, len(tokens) - 1)
            if tokens[doc].numel() > length:
                break
        start = rng.randint(0, tokens[doc].numel() - length - 1)
        if fresh.take((doc,), start, found=len(out)):
            out.append((doc, start))
    return out


class _Fresh:
    """Windows already taken (``(where, start, length)``; ``where`` names the document, or nothing
    for one stream); :meth:`take` keeps a draw that overlaps none of them. Without exclusions every
    draw is kept, so the reference samplers' draws are unchanged."""

    def __init__(self, taken: list[tuple[tuple, int, int]], nsamples: int, length: int):
        self.taken, self.active, self.nsamples, self.length, self.tries = list(taken), bool(taken), nsamples, length, 0

    def take(self, where: tuple, start: int, *, found: int) -> bool:
        if not self.active:
            return True
        self.tries += 1
        if self.tries > 200 * self.nsamples:
            raise UserError(f"the text holds too few windows of {self.length} tokens that overlap none of the "
                            f"calibration and probe windows ({found} of {self.nsamples} found); use fewer tokens "
                            "per selection stage or a source with more text.")
        if any(w == where and start < s + n and s < start + self.length for w, s, n in self.taken):
            return False
        self.taken.append((where, start, self.length))
        return True


def stream_positions(stream_length: int, *, nsamples: int, length: int, seed: int,
                     exclude: Sequence[tuple[int, int]] = ()) -> list[int]:
    """Starts of the windows :func:`sample_stream` draws; with ``exclude`` ((start, length) of other
    windows), fresh windows that overlap none of them nor each other."""
    if stream_length <= length:
        raise UserError(f"the text has only {stream_length} tokens, too short for one window of {length} "
                        "text tokens; use a shorter seqlen or more text.")
    rng = random.Random(seed)
    fresh = _Fresh([((), s, n) for s, n in exclude], nsamples, length)
    out: list[int] = []
    while len(out) < nsamples:
        start = rng.randint(0, stream_length - length - 1)
        if fresh.take((), start, found=len(out)):
            out.append(start)
    return out


def sample_stream(stream: torch.Tensor, *, nsamples: int, length: int, seed: int) -> list[torch.Tensor]:
    """Wanda/SparseGPT ``get_wikitext2`` trainloader: random offsets into one token stream."""
    starts = stream_positions(stream.numel(), nsamples=nsamples, length=length, seed=seed)
    return [stream[s:s + length] for s in starts]


def split_stream(stream: torch.Tensor, *, length: int, max_windows: int | None) -> list[torch.Tensor]:
    """Non-overlapping windows from the start of the stream; the tail is dropped."""
    n = stream.numel() // length
    if n == 0:
        check_stream(stream, length)
    if max_windows is not None:
        n = min(n, max_windows)
    return list(stream[: n * length].view(n, length))


def check_stream(stream: torch.Tensor, length: int) -> None:
    """Raise a UserError when the stream cannot hold a window of ``length`` text tokens."""
    if stream.numel() <= length:
        raise UserError(f"the text has only {stream.numel()} tokens, too short for one window of {length} "
                        "text tokens; use a shorter seqlen or more text.")


def stack_windows(windows: list[torch.Tensor], bos_token_id: int | None) -> torch.Tensor:
    """Stack equal-length windows into ``(n, seqlen)``, each prefixed by BOS if given."""
    ids = torch.stack(windows).to(torch.long)
    if bos_token_id is not None:
        ids = torch.cat([torch.full((ids.shape[0], 1), bos_token_id, dtype=torch.long), ids], dim=1)
    return ids.contiguous()


def windows_sha256(input_ids: torch.Tensor) -> str:
    """sha256 of the int64 bytes of ``input_ids`` (row-major)."""
    return hashlib.sha256(input_ids.to(torch.long).contiguous().numpy().tobytes()).hexdigest()
