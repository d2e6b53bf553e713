"""The text a pruning job reads, as settings: the calibration windows and the held-out text. One
model each, shared by the study config (``calibration:`` / ``heldout:``), the plan files (what a
plan was found with) and the command line (``--calib --nsamples --seqlen --seed``, ``--eval
--eval-seqlen --eval-windows``). The defaults are the papers' protocol (Wanda, SparseGPT: C4,
128 x 2048, seed 0; WikiText-2 test at 2048, every window); :data:`QUICK` is the CPU-friendly
one (``--quick``; the quickstart and the acceptance configs use it)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: CPU-friendly sizes: 32 x 512 calibration, held-out windows of 1,024 tokens, the first 16
QUICK = dict(nsamples=32, seqlen=512, eval_seqlen=1024, eval_windows=16)


class Calibration(BaseModel):
    """Calibration windows: ``nsamples`` windows of ``seqlen`` tokens drawn from ``source`` with ``seed``
    (``split`` / ``text_field`` for a Hugging Face dataset id or a .jsonl/.json file)."""

    model_config = ConfigDict(extra="forbid")
    source: str = "c4"
    nsamples: int = Field(128, ge=1)
    seqlen: int = Field(2048, ge=8)
    seed: int = 0
    split: str | None = None
    text_field: str | None = None


class Heldout(BaseModel):
    """Held-out text: ``source`` cut into windows of ``seqlen`` tokens, the first ``windows`` of them
    (None: every window)."""

    model_config = ConfigDict(extra="forbid")
    source: str = "wikitext2"
    seqlen: int = Field(2048, ge=8)
    windows: int | None = Field(None, ge=1)
