"""``model_recon``: model-wise reconstruction error between the dense and the pruned model on the
probe windows (OptiShear's objective and better-behaved forms of it).

Forms (``form``):

- ``logits_fro``: the literal OptiShear error ||f_dense(P) - f_pruned(P)||_F over the logits of
  every probe token. Computed without materialising logits: with LM-head inputs n and head weight
  E, ||(n_p - n_d) E^T||_F^2 = sum_t dn_t (E^T E) dn_t^T (the bias cancels); with Gemma's
  logit soft-capping the logits are formed in chunks instead.
- ``final_rel``: ||n_p - n_d||_F^2 / ||n_d||_F^2 over the LM-head inputs (final normed hidden states).
- ``final_cos``: mean over tokens of 1 - cos(n_p, n_d).
- ``hidden_rel``: sum over blocks of ||h_p - h_d||_F^2 / ||h_d||_F^2 (each block's residual stream).
- ``hidden_rms``: sum over blocks of the mean over tokens of ||u_p - u_d||^2 / d, u = h / rms(h).
- ``hidden_cos``: sum over blocks of the mean over tokens of 1 - cos(h_p, h_d).

Early stopping: with ``early_stop`` (default) the dense block outputs are kept and, after each
block ``l``, ``report(partial, l)`` gets the accumulated per-block error of blocks 0..l (the
``hidden_*`` form itself, or ``hidden_cos`` for the final/logit forms); ``TrialStopped`` is raised
when it returns True. Memory: the dense block outputs take n_blocks x probe tokens x hidden x 4
bytes (SmolLM2-135M, 8 x 512 probe tokens: 0.28 GiB), the LM-head inputs one more block's worth.
"""

from __future__ import annotations

import torch

from automl_prune.candidate_context import CandidateContext
from automl_prune.pruning.apply import PruneResult

from . import probe as P
from .base import Objective, Reporter, TrialStopped, register
from .common import check_choice, check_positive_int, finite

FORMS = ("logits_fro", "final_rel", "final_cos", "hidden_rel", "hidden_rms", "hidden_cos")


@register
class ModelRecon(Objective):
    name = "model_recon"
    direction = "minimize"

    def __init__(self, *, form: str = "hidden_cos", windows: int | None = None, seqlen: int | None = None,
                 batch_size: int | None = None, early_stop: bool = True):
        self.form = check_choice(self.name, "form", form, FORMS)
        self.windows = check_positive_int(self.name, "windows", windows)
        self.seqlen = check_positive_int(self.name, "seqlen", seqlen)
        self.batch_size = check_positive_int(self.name, "batch_size", batch_size)
        self.early_stop = bool(early_stop)
        self.partial_form = form if form.startswith("hidden_") else "hidden_cos"

    def probe_windows_read(self) -> int | None:
        return self.windows

    @property
    def _need_blocks(self) -> bool:
        return self.early_stop or self.form.startswith("hidden_")

    def prepare(self, ctx: CandidateContext) -> None:
        P.reference(ctx, self.windows, self.seqlen, blocks=self._need_blocks, batch_size=self.batch_size)
        if self.form == "logits_fro" and "head_gram" not in ctx.memo and P._softcap(ctx.model) is None:
            w = ctx.model.get_output_embeddings().weight.detach().float()
            ctx.memo["head_gram"] = w.T @ w  # (d, d)

    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        hook = None
        if report is not None and self.early_stop:
            def hook(i: int, run: P.ProbeRun) -> None:
                partial = float(run.block_terms(self.partial_form)[: i + 1].sum())
                if report(partial, i):
                    raise TrialStopped(f"model_recon stopped after block {i} (partial error {partial:.4g})")
        run = P.run(ctx, result, self.windows, self.seqlen, report=hook, need_blocks=self._need_blocks,
                    batch_size=self.batch_size)
        return finite(self.name, self.value(ctx, run))

    def value(self, ctx: CandidateContext, run: P.ProbeRun) -> float:
        """The error of ``form`` from a probe run."""
        if self.form.startswith("hidden_"):
            return float(run.block_terms(self.form).sum())
        ref = P.reference(ctx, self.windows, self.seqlen)
        dense, pruned = ref.final, run.final
        if self.form == "final_rel":
            return float((pruned - dense).square().sum() / dense.square().sum().clamp_min(1e-30))
        if self.form == "final_cos":
            return float((1 - torch.nn.functional.cosine_similarity(pruned, dense, dim=-1)).mean())
        # logits_fro
        gram = ctx.memo.get("head_gram")
        if gram is not None:
            diff = pruned - dense
            return float(((diff @ gram) * diff).sum().clamp_min(0).sqrt())
        total = 0.0
        for sl, lp in P.logit_chunks(ctx.model, pruned):
            total += float((lp - P.head_logits(ctx.model, dense[sl])).square().sum())
        return total ** 0.5
