"""Perplexity objectives: ``ppl`` on the held-out windows, ``calib_ppl`` on the probe windows.

``ppl`` follows the reference protocol (exp of the mean next-token NLL over every predicted token
of fixed windows; ``automl_prune.evaluation.perplexity``) on ``ctx.heldout_ids`` (the probe
windows when the context has none); ``windows`` keeps only the first windows.

``calib_ppl`` is the same quantity on the probe windows (calibration-domain text): it shares the
probe forward with ``kl`` and ``model_recon`` (one forward per candidate for all three) and forms
logits 512 tokens at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from automl_prune.candidate_context import CandidateContext
from automl_prune.candidate_stream import candidate_perplexity
from automl_prune.pruning.apply import PruneResult

from . import probe as P
from .base import Objective, Reporter, register
from .common import ObjectiveError, check_positive_int, finite


def _exp(name: str, nll: float) -> float:
    nll = finite(name, nll)
    if nll > 700:
        raise ObjectiveError(f"objective {name!r}: perplexity overflows (mean NLL {nll:.1f})")
    return math.exp(nll)


@register
class HeldoutPerplexity(Objective):
    name = "ppl"
    direction = "minimize"

    def __init__(self, *, windows: int | None = None, batch_size: int = 1):
        self.windows = check_positive_int(self.name, "windows", windows)
        self.batch_size = check_positive_int(self.name, "batch_size", batch_size, optional=False)

    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        ids = ctx.heldout_ids if ctx.heldout_ids is not None else ctx.probe_ids
        if self.windows is not None:
            ids = ids[: self.windows]
        out = candidate_perplexity(ctx, ids, batch_size=self.batch_size)
        return _exp(self.name, out["nll"])


@register
class CalibPerplexity(Objective):
    name = "calib_ppl"
    direction = "minimize"

    def __init__(self, *, windows: int | None = None, seqlen: int | None = None, batch_size: int | None = None):
        self.windows = check_positive_int(self.name, "windows", windows)
        self.seqlen = check_positive_int(self.name, "seqlen", seqlen)
        self.batch_size = check_positive_int(self.name, "batch_size", batch_size)

    def probe_windows_read(self) -> int | None:
        return self.windows

    def prepare(self, ctx: CandidateContext) -> None:
        P.reference(ctx, self.windows, self.seqlen, batch_size=self.batch_size)

    @torch.no_grad()
    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        run = P.run(ctx, result, self.windows, self.seqlen, batch_size=self.batch_size)
        ids = P.probe_windows(ctx, self.windows, self.seqlen)
        n, length = ids.shape
        hidden = run.final.reshape(n, length, -1)[:, :-1].reshape(-1, run.final.shape[-1])
        targets = ids[:, 1:].reshape(-1).to(hidden.device)
        total = 0.0
        for sl, logits in P.logit_chunks(ctx.model, hidden):
            total += float(F.cross_entropy(logits, targets[sl], reduction="sum"))
        return _exp(self.name, total / targets.numel())
