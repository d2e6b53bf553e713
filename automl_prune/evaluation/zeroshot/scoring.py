"""Log-likelihood of continuations given contexts, batched, as lm-evaluation-harness's HFLM computes it.

* Encoding (``encode_pair``): trailing spaces of the context move to the continuation; the whole
  string is tokenized and the continuation is what follows the context's tokens; the tokenizer's
  own special-token default applies unless ``add_special_tokens`` is given (HFLM's
  ``add_bos_token``). An empty context becomes the prefix token (BOS, else EOS).
* Scoring (``loglikelihoods``): input = (context + continuation)[-(max_length + 1):][:-1];
  requests with the same input share a row; rows are sorted longest first, batched and padded on the right (a causal model never
  attends to later positions, so padding changes nothing, and no attention mask is passed, as in
  HFLM); the log-softmax of the logits at the continuation positions gives the summed
  log-likelihood and whether every continuation token is the greedy argmax. Only the logits of the
  positions that hold continuation tokens are formed (``logits_to_keep`` where the model has it).
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from ...progress import progress_bar

Request = tuple[list[int], list[int]]  # (context tokens, continuation tokens)


def prefix_token_id(tokenizer: Any) -> int:
    """The token an empty context stands for: BOS, else EOS (HFLM's ``prefix_token_id``)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None else tokenizer.eos_token_id


def tok_encode(tokenizer: Any, text: str, add_special_tokens: bool | None = None) -> list[int]:
    kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
    return list(tokenizer.encode(text, **kwargs))


def encode_pair(tokenizer: Any, context: str, continuation: str, add_special_tokens: bool | None = None) -> Request:
    """(context tokens, continuation tokens) as lm-eval's ``_encode_pair`` / ``loglikelihood`` split them."""
    if context == "":
        return [prefix_token_id(tokenizer)], tok_encode(tokenizer, continuation, add_special_tokens)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation, add_special_tokens)
    ctx = tok_encode(tokenizer, context, add_special_tokens)
    return ctx, whole[len(ctx):]


def max_length_of(model: nn.Module, default: int = 2048) -> int:
    """The model's context length, looked up as HFLM does (config fields, else 2048)."""
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return default


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def loglikelihoods(model: nn.Module, requests: Sequence[Request], *, batch_size: int = 8, device: torch.device | str | None = None,
                   max_length: int | None = None, progress: bool = True, desc: str = "zero-shot") -> list[tuple[float, bool]]:
    """``(sum of log p(continuation | context), continuation is the greedy decode)`` per request, in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    device = device if device is not None else next(model.parameters()).device
    max_length = max_length or max_length_of(model)
    keep = _accepts_logits_to_keep(model)
    # requests with the same input tokens (e.g. one-token answers " no"/" yes" after the same
    # context) share one row of a forward pass, as lm-eval's HFLM does
    rows: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i} has an empty continuation")
        rows.setdefault(tuple((ctx + cont)[-(max_length + 1):][:-1]), []).append(i)
    unique = sorted(rows, key=len, reverse=True)  # longest first (stable: ties keep their first-seen order)
    out: list[tuple[float, bool] | None] = [None] * len(requests)
    batches = [unique[s : s + batch_size] for s in range(0, len(unique), batch_size)]
    for batch in progress_bar(batches, desc=desc, unit="batch", enabled=progress, leave=False):
        width = max(len(x) for x in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        for r, inp in enumerate(batch):
            ids[r, : len(inp)] = torch.tensor(inp, dtype=torch.long)
        members = [[(i, len(inp) - min(len(requests[i][1]), max_length)) for i in rows[inp]] for inp in batch]
        first = min(start for m in members for _, start in m)
        kwargs: dict[str, Any] = {"use_cache": False}
        if keep:
            kwargs["logits_to_keep"] = width - first
        logits = model(input_ids=ids.to(device), **kwargs).logits
        offset = width - logits.shape[1]  # position of logits[:, 0]
        for r, m in enumerate(members):
            for i, start in m:
                cont = requests[i][1][-max_length:]
                logp = F.log_softmax(logits[r, start - offset : start - offset + len(cont)].float(), dim=-1)
                target = torch.tensor(cont, dtype=torch.long, device=logp.device)
                out[i] = (float(logp.gather(-1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all()))
    return out  # type: ignore[return-value]
