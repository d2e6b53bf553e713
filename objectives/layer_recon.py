"""``layer_recon``: per-layer reconstruction error from the cached Gram matrices (no forward pass).

For a linear layer with dense inputs X (tokens x in), G = X^T X (``LinearStats.gram``) and
dW = W_dense - W_pruned, the output error is

    e_l = ||X dW^T||_F^2 = trace(dW G dW^T) = sum_i (dW G dW^T)_ii     (one value per output row i)

and the dense output energy is trace(W G W^T). Layers that read the same input (q/k/v, gate/up)
share one Gram matrix: their dW rows are stacked and go through one matmul, so the cost is one
(rows x in x in) product per distinct input per block (SmolLM2-135M: about 90 GFLOP in all).

``sketch: r`` replaces each G by a fixed random sketch: with G + eps I = L L^T (Cholesky, once)
and S an (in x r) random matrix with orthonormal columns scaled by sqrt(in / r) (so E[S S^T] = I),
B = L S and e_l ~ ||dW B||_F^2, an unbiased estimate at (rows x in x r) cost. S is drawn once
per context (``seed``), so all candidates are measured with the same sketch (common random
numbers: differences between candidates are estimated far better than the errors themselves).

Weightings (``weighting``) that combine the per-layer errors into one number:

- ``uniform``: mean over layers of e_l / trace(W G W^T) (relative errors; the issue's
  "normalised per layer and summed", up to the constant number of layers).
- ``energy``: sum_l e_l / sum_l trace(W_l G_l W_l^T) (each layer weighted by its share of the
  dense output energy).
- ``log``: mean over layers of log relative errors (a geometric mean).
- ``block``: mean over blocks of the block's summed error over its summed energy.
- ``fisher``: a second-order estimate of the increase of the mean next-token loss,
  0.5 sum_l sum_i F_li (dW G dW^T)_ii / N_l, with F_li the mean squared gradient of the loss
  with respect to output channel i of layer l (a diagonal Fisher of the layer's outputs, measured
  once on the dense model over ``fisher_windows`` probe windows: one backward pass each) and N_l
  the calibration token count. This is the Kronecker-factored (K-FAC) quadratic model of the
  loss, E[(g . dW x)^2] ~ sum_i E[g_i^2] E[(dW x)_i^2], the curvature model used by OBD-style
  and LLM-Surgeon-style pruning. ``fisher_labels``: ``data`` (gradients of the loss on the
  real next tokens: empirical Fisher) or ``model`` (next tokens sampled from the dense model:
  true Fisher, whose quadratic form is the second-order KL(dense || pruned)).
- ``fisher_layer``: the same with one scalar per layer (mean of F_li over the channels).
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict

import torch

from automl_prune.candidate_context import CandidateContext
from automl_prune.candidate_stream import stream_fisher, stream_pass
from automl_prune.errors import UserError
from automl_prune.evaluation.kl import swapped_weights
from automl_prune.fisher import next_token_loss, output_grad_hooks
from automl_prune.pruning.apply import PruneResult
from automl_prune.pruning.masks import all_finite

from . import probe as P
from .base import Objective, Reporter, register
from .common import ObjectiveError, check_choice, check_positive_int, finite

WEIGHTINGS = ("uniform", "energy", "log", "block", "fisher", "fisher_layer")


def output_fisher(ctx: CandidateContext, ids: torch.Tensor, *, labels: str = "data", seed: int = 0) -> dict[str, torch.Tensor]:
    """Mean over tokens of the squared gradient of the summed next-token loss with respect to every
    prunable layer's outputs, per output channel, on the dense model; one window at a time.

    Only activation gradients are formed (the weights are frozen for the pass, the embeddings are
    the leaf), so one pass costs about two forwards.
    """
    model = ctx.model
    acc = {name: torch.zeros(m.out_features, dtype=torch.float64, device=ctx.device) for name, m in ctx.modules.items()}
    count = 0
    gen = torch.Generator(device="cpu").manual_seed(seed)

    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    handles = output_grad_hooks(ctx.modules, acc)
    try:
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad(), swapped_weights(ctx.modules, ctx.dense):
            for w in range(ids.shape[0]):
                window = ids[w : w + 1].to(ctx.device)
                emb = model.get_input_embeddings()(window).detach().requires_grad_(True)
                next_token_loss(model(inputs_embeds=emb, use_cache=False).logits, window, labels, gen).backward()
                count += window.numel()
    finally:
        for h in handles:
            h.remove()
        for p, f in zip(params, flags):
            p.requires_grad_(f)
    return {k: (v / max(count, 1)).float() for k, v in acc.items()}


class GroupErrors:
    """Per-row errors of layer groups by what their layers hold, across the candidates of one
    context: an allocation move that leaves a layer's mask alone (an evolution child switches a few
    layers' levels; a per-block allocation that keeps a block's sparsity) costs only the groups it
    changed. A group's key is its layers' names and, per layer, the digest of its zero mask
    (``CandidateContext.layer_digests``): without a weight update the pruned weights are the dense
    ones under that mask. With an update (SparseGPT, ADMM; pruned one-shot, layer by layer, from
    the dense statistics) its weights also depend on the plan's fields other than the allocation
    (metric, pattern, permutation, refinement, update settings) and the layer's target sparsity,
    which join the key. Values are the same tensors a fresh computation gives (the same product on
    the same weights), under the context's contract that its weights change only through ``apply``
    and ``restore``. Bounded: least recently used first out beyond ``budget_bytes``
    (256 MiB by default, ``$AUTOML_PRUNE_LAYER_ERRORS_MB``; SmolLM2-135M: 0.6 MB a candidate)."""

    def __init__(self, budget_bytes: int | None = None):
        self.budget = int(float(os.environ.get("AUTOML_PRUNE_LAYER_ERRORS_MB", 256)) * 2**20) if budget_bytes is None else budget_bytes
        self.entries: OrderedDict = OrderedDict()
        self.bytes = 0
        self.hits = 0

    @staticmethod
    def layer_keys(ctx: CandidateContext) -> dict | None:
        """Per layer, what its weights are a function of (None when the context holds no applied plan)."""
        result = ctx.applied_result
        if result is None:
            return None
        digests = ctx.layer_digests()
        plan = result.plan
        if plan.update == "none":
            return digests
        base = json.dumps(plan.layer_settings(), sort_keys=True)
        return {n: (d, base, plan.sparsity_of(n, len(ctx.blocks))) for n, d in digests.items()}

    def get(self, key) -> torch.Tensor | None:
        rows = self.entries.get(key)
        if rows is not None:
            self.entries.move_to_end(key)
            self.hits += 1
        return rows

    def put(self, key, rows: torch.Tensor) -> None:
        size = rows.numel() * rows.element_size()
        if size > self.budget:
            return
        while self.entries and self.bytes + size > self.budget:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.numel() * old.element_size()
        self.entries[key] = rows
        self.bytes += size


@register
class LayerRecon(Objective):
    name = "layer_recon"
    direction = "minimize"

    def __init__(self, *, weighting: str = "fisher", sketch: int | None = None, seed: int = 0, fisher_windows: int = 4,
                 fisher_seqlen: int | None = None, fisher_labels: str = "data"):
        self.weighting = check_choice(self.name, "weighting", weighting, WEIGHTINGS)
        self.sketch = check_positive_int(self.name, "sketch", sketch)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"objective 'layer_recon': field 'seed' must be an integer; got {seed!r}")
        self.seed = seed
        self.fisher_windows = check_positive_int(self.name, "fisher_windows", fisher_windows, optional=False)
        self.fisher_seqlen = check_positive_int(self.name, "fisher_seqlen", fisher_seqlen)
        self.fisher_labels = check_choice(self.name, "fisher_labels", fisher_labels, ("data", "model"))

    def not_streamable(self) -> str | None:
        if self.sketch is not None:
            return "layer_recon's sketch factorises every Gram matrix once per context (leave 'sketch' out)"
        return None

    def backward_windows(self) -> int:
        return self.fisher_windows if self.weighting.startswith("fisher") else 0

    # ----- once per context ---------------------------------------------------------------------
    def _groups(self, ctx: CandidateContext) -> list[tuple[list[str], torch.Tensor, int]]:
        """(layer names sharing one input, their Gram matrix, calibration token count)."""
        groups = ctx.memo.get("layer_recon_groups")
        if groups is not None:
            return groups
        groups = []
        for i, block_stats in enumerate(ctx.stats):
            by_input: dict[int, list[str]] = {}
            for name in (n for n in ctx.modules if n.split(".", 1)[0] == str(i)):
                st = block_stats.get(name.split(".", 1)[1])
                if st is None or st.gram is None:
                    raise UserError("objective 'layer_recon' needs dense statistics with Gram matrices "
                                    f"(with_gram=True); layer {name} has none")
                by_input.setdefault(id(st), []).append(name)
            for names in by_input.values():
                st = block_stats[names[0].split(".", 1)[1]]
                groups.append((names, st.gram.to(ctx.device, torch.float32), max(int(st.n_tokens), 1)))
        ctx.memo["layer_recon_groups"] = groups
        return groups

    def _operators(self, ctx: CandidateContext) -> list[tuple[list[str], torch.Tensor, int]]:
        """Per group, the matrix dW is multiplied by: G itself (exact) or its sketch B = L S."""
        groups = self._groups(ctx)
        if self.sketch is None:
            return groups
        key = ("layer_recon_sketch", self.sketch, self.seed)
        ops = ctx.memo.get(key)
        if ops is None:
            gen = torch.Generator(device="cpu").manual_seed(self.seed)
            ops = []
            for names, gram, n in groups:
                dim = gram.shape[0]
                if self.sketch >= dim:  # no saving: exact
                    ops.append((names, gram, n))
                    continue
                r = self.sketch
                g = gram.double()
                eps = 1e-6 * float(g.diagonal().mean().clamp_min(1e-30))
                for _ in range(8):
                    L, info = torch.linalg.cholesky_ex(g + eps * torch.eye(dim, dtype=g.dtype, device=g.device))
                    if int(info) == 0:
                        break
                    eps *= 10
                else:
                    raise ObjectiveError(f"objective 'layer_recon': the Gram matrix of {names[0]} is not positive semi-definite")
                q, _ = torch.linalg.qr(torch.randn(dim, r, generator=gen, dtype=torch.float64))
                ops.append((names, ((L @ q.to(L.device)) * (dim / r) ** 0.5).float(), n))
            ctx.memo[key] = ops
        return ops

    def _prepare_streamed(self, ctx: CandidateContext) -> None:
        """A block-streamed context: the dense energies and the Fisher from passes over the blocks;
        every candidate's pass computes its per-row errors (registered here)."""
        if self.sketch is not None:
            raise UserError("objective 'layer_recon': 'sketch' does not work with offloaded blocks (each block's "
                            "Gram matrix is read once per candidate; the exact product costs the same); leave it out")
        ctx.memo["stream_rows"] = True
        if "layer_recon_energy" not in ctx.memo:
            ctx.memo["layer_recon_energy"] = stream_pass(ctx, None, rows=True).rows
        if "layer_recon_ntokens" not in ctx.memo:
            ctx.memo["layer_recon_ntokens"] = (ctx.stats.token_counts() if hasattr(ctx.stats, "token_counts") else
                                               {f"{i}.{n}": max(int(st.n_tokens), 1) for i, b in enumerate(ctx.stats)
                                                for n, st in b.items()})
        if self.weighting.startswith("fisher"):
            key = ("layer_recon_fisher", self.fisher_windows, self.fisher_seqlen, self.fisher_labels)
            if key not in ctx.memo:
                ids = P.probe_windows(ctx, self.fisher_windows, self.fisher_seqlen)
                ctx.memo[key] = stream_fisher(ctx, ids, labels=self.fisher_labels)

    def prepare(self, ctx: CandidateContext) -> None:
        if ctx.streamed:
            return self._prepare_streamed(ctx)
        groups = self._groups(ctx)
        if "layer_recon_energy" not in ctx.memo:
            ctx.memo["layer_recon_energy"] = self._row_errors(ctx, groups, dense=True)
        self._operators(ctx)
        if self.weighting.startswith("fisher"):
            key = ("layer_recon_fisher", self.fisher_windows, self.fisher_seqlen, self.fisher_labels)
            if key not in ctx.memo:
                ids = P.probe_windows(ctx, self.fisher_windows, self.fisher_seqlen)
                ctx.memo[key] = output_fisher(ctx, ids, labels=self.fisher_labels)

    # ----- per candidate ------------------------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def _row_errors(ctx: CandidateContext, groups, *, dense: bool = False, known: GroupErrors | None = None,
                    op_key=None) -> dict[str, torch.Tensor]:
        """Per output row: (dW G dW^T)_ii (or (W G W^T)_ii for the dense weights); with a sketched
        operator B (in x r, r < in): ||(dW B)_i||^2. ``known``: the errors of groups whose layers
        held the same weights before (see :class:`GroupErrors`), read and filled."""
        out: dict[str, torch.Tensor] = {}
        layer_keys = None if known is None or dense else known.layer_keys(ctx)
        for names, op, _n in groups:
            key = None if layer_keys is None else (op_key, tuple(names), tuple(layer_keys[n] for n in names))
            rows = known.get(key) if key is not None else None
            sizes = [ctx.modules[n].out_features for n in names]
            if rows is None:
                mats = [ctx.dense[n] if dense else ctx.pruned_delta(n) for n in names]
                d = mats[0] if len(mats) == 1 else torch.cat(mats)
                d = d.to(op.device, torch.float32)
                rows = ((d @ op) * d).sum(1) if op.shape[0] == op.shape[1] else (d @ op).square().sum(1)
                if key is not None and all_finite(rows):  # a failing candidate's rows are not kept
                    known.put(key, rows)
            for n, r in zip(names, rows.split(sizes)):
                out[n] = r
        return out

    def row_errors(self, ctx: CandidateContext) -> dict[str, torch.Tensor]:
        """Per layer, per output row: the pruning error of the model as it is now (computed once per
        candidate and operator: the weightings of one candidate share the Gram products; a group of
        layers whose weights an earlier candidate held is not computed again)."""
        memo = ctx.candidate_memo
        if ctx.streamed:  # computed in the candidate's pass, or a pass of its own
            if "stream_rows" not in memo:
                memo["stream_rows"] = stream_pass(ctx, ctx.applied_result.plan, rows=True).rows
            return memo["stream_rows"]
        op_key = (self.sketch, self.seed if self.sketch is not None else None)
        key = ("layer_recon_rows", *op_key)
        if key not in memo:
            known = ctx.memo.setdefault("layer_recon_known", GroupErrors())
            memo[key] = self._row_errors(ctx, self._operators(ctx), known=known, op_key=op_key)
        return memo[key]

    def layer_errors(self, ctx: CandidateContext) -> dict[str, tuple[float, float]]:
        """Per layer: (||X dW^T||_F^2, ||X W^T||_F^2) over the calibration tokens."""
        self.prepare(ctx)
        energy = ctx.memo["layer_recon_energy"]
        return {n: (float(r.sum()), float(energy[n].sum())) for n, r in self.row_errors(ctx).items()}

    def combine(self, ctx: CandidateContext, rows: dict[str, torch.Tensor]) -> float:
        """The objective value of ``weighting`` from per-row errors."""
        energy = ctx.memo["layer_recon_energy"]
        names = list(rows)
        err = torch.stack([rows[n].sum() for n in names]).double()
        eng = torch.stack([energy[n].sum() for n in names]).double().clamp_min(1e-30)
        w = self.weighting
        if w == "uniform":
            return float((err / eng).mean())
        if w == "energy":
            return float(err.sum() / eng.sum())
        if w == "log":
            return float(torch.log((err / eng).clamp_min(1e-12)).mean())
        if w == "block":
            blocks = torch.tensor([int(n.split(".", 1)[0]) for n in names], device=err.device)
            nb = int(blocks.max()) + 1
            be = torch.zeros(nb, dtype=torch.float64, device=err.device).index_add_(0, blocks, err)
            bd = torch.zeros(nb, dtype=torch.float64, device=err.device).index_add_(0, blocks, eng.to(err.device))
            return float((be / bd.clamp_min(1e-30)).mean())
        fisher = ctx.memo[("layer_recon_fisher", self.fisher_windows, self.fisher_seqlen, self.fisher_labels)]
        ntok = ctx.memo.get("layer_recon_ntokens")
        if ntok is None:
            ntok = ctx.memo["layer_recon_ntokens"] = {n: g[2] for g in self._groups(ctx) for n in g[0]}
        total = 0.0
        for n in names:
            f = fisher[n].to(rows[n].device)
            total += float((f * rows[n]).sum() if w == "fisher" else f.mean() * rows[n].sum()) / ntok[n]
        return 0.5 * total

    def __call__(self, ctx: CandidateContext, result: PruneResult, report: Reporter | None = None) -> float:
        self.prepare(ctx)
        rows = self.row_errors(ctx)
        bad = [n for n, r in rows.items() if not bool(torch.isfinite(r).all())]
        if bad:
            raise ObjectiveError(f"objective 'layer_recon': non-finite reconstruction error in layers {bad[:3]}")
        return finite(self.name, self.combine(ctx, rows))
