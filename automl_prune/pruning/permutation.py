"""Channel permutation for N:M sparsity (RIA, Zhang et al. 2024), pure tensor maths.

An N:M mask keeps the N best of every M *consecutive* input channels. Permuting the input
channels first lets the groups mix strong and weak channels, so that more of the total score
survives. The mask is then N:M in the permuted channel order: to run it on N:M hardware the
layer's input channels (and the producer of that input) are permuted by the same order.

- Heuristic reallocation: channels sorted by their total score (column sum), dealt out tier by
  tier (M tiers of K = in / M channels); within a tier the strongest remaining channel goes to the
  group whose running total is lowest, so the groups end balanced.
- Optional refinement by linear sum assignment (scipy): for each slot t of the M slots, take
  slot t's channel out of every group and reassign those K channels to the K groups so as to
  maximise the total retained N:M score (exact for that slot, so never worse than before).

A permutation is only returned if it retains at least as much score as the identity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .masks import nm_mask


class Permutation(NamedTuple):
    order: torch.Tensor  # int64 (in,): permuted column k is original column order[k]
    retained: float  # total score kept by the N:M mask in the permuted order
    retained_identity: float  # and without permutation
    method: str  # "heuristic", "heuristic+lsa" or "identity" (when nothing better was found)


def nm_retained(score: torch.Tensor, n: int, m: int) -> float:
    """Total score kept by the N:M mask of ``score`` (columns in their given order)."""
    return float(score.double().masked_fill(nm_mask(score, n, m), 0.0).sum())


def _group_retained(groups: torch.Tensor, n: int) -> torch.Tensor:
    """Score kept by N:M in groups (..., out, M): sum over rows of the n largest of each row."""
    return groups.topk(n, dim=-1).values.sum(-1).sum(-1)


def heuristic_order(score: torch.Tensor, m: int) -> torch.Tensor:
    """Deal channels sorted by total score out to the K = in / m groups, the strongest remaining
    channel of each tier to the group with the lowest running total; returns the permuted order."""
    cols = score.shape[1]
    k = cols // m
    totals = score.double().sum(0)
    ranked = torch.argsort(totals, descending=True, stable=True)
    slots = torch.empty(k, m, dtype=torch.long)
    running = torch.zeros(k, dtype=torch.float64)
    for t in range(m):
        tier = ranked[t * k : (t + 1) * k]  # descending totals
        weakest = torch.argsort(running, stable=True)  # groups, lowest running total first
        slots[weakest, t] = tier
        running[weakest] += totals[tier]
    return slots.reshape(-1)


def lsa_refine(score: torch.Tensor, order: torch.Tensor, n: int, m: int, *, chunk: int = 32) -> torch.Tensor:
    """One pass of slot-wise linear sum assignment over the groups of ``order``."""
    from scipy.optimize import linear_sum_assignment

    s = score.double()
    k = s.shape[1] // m
    slots = order.reshape(k, m).clone()
    for t in range(m):
        others = torch.cat([slots[:, :t], slots[:, t + 1 :]], 1)  # (k, m-1)
        movers = slots[:, t]  # (k,)
        cand = s[:, movers]  # (out, k): the candidate channels
        gain = torch.empty(k, k, dtype=torch.float64)  # gain[i, b]: mover i placed in group b
        for b0 in range(0, k, chunk):
            b1 = min(b0 + chunk, k)
            base = s[:, others[b0:b1].reshape(-1)].reshape(s.shape[0], b1 - b0, m - 1)  # (out, B, m-1)
            full = torch.cat([base.unsqueeze(2).expand(-1, -1, k, -1), cand.unsqueeze(1).expand(-1, b1 - b0, -1).unsqueeze(-1)], -1)
            gain[:, b0:b1] = _group_retained(full.permute(1, 2, 0, 3), n).T  # (B, k) -> (k, B)
        rows, cols = linear_sum_assignment(gain.numpy(), maximize=True)
        new = torch.empty_like(movers)
        new[torch.as_tensor(cols)] = movers[torch.as_tensor(rows)]
        slots[:, t] = new
    return slots.reshape(-1)


def nm_permutation(score: torch.Tensor, n: int, m: int, *, lsa: bool = False) -> Permutation:
    """The channel order for an N:M mask of ``score`` (out, in): heuristic reallocation, then
    optionally LSA refinement; the identity when neither retains more score."""
    cols = score.shape[1]
    if cols % m:
        raise ValueError(f"N:M {n}:{m} needs in_features divisible by {m}; this layer has in_features={cols}")
    identity = torch.arange(cols)
    base = nm_retained(score, n, m)
    order = heuristic_order(score.cpu(), m)
    method = "heuristic"
    if lsa:
        order = lsa_refine(score.cpu(), order, n, m)
        method = "heuristic+lsa"
    kept = nm_retained(score[:, order.to(score.device)], n, m)
    if kept < base:
        return Permutation(identity, base, base, "identity")
    return Permutation(order, kept, base, method)


def permuted_nm_mask(score: torch.Tensor, perm: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The N:M mask chosen in the permuted order, returned in the original channel order."""
    perm = perm.to(score.device)
    mask = torch.empty_like(score, dtype=torch.bool)
    mask[:, perm] = nm_mask(score[:, perm], n, m)
    return mask
