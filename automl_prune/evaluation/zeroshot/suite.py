"""Load, format and tokenize the tasks once; score any model on them; aggregate lm-eval's metrics.

Metrics per task (lm-evaluation-harness definitions):

* ``acc``: the request with the largest summed log-likelihood is the gold one (multiple choice),
  or every continuation token is the greedy argmax (LAMBADA);
* ``acc_norm`` (PIQA, ARC, HellaSwag): the argmax of log-likelihood divided by the choice's length
  in characters (lm-eval's ``len(choice)``, the delimiter not counted);
* ``ppl`` (LAMBADA): ``exp(-mean log-likelihood of the last word)`` over the documents;
* ``*_stderr``: the standard error of the mean (sample standard deviation / sqrt(n)).

``average``: ``acc`` is the mean of the tasks' ``acc``; ``acc_norm`` the mean of ``acc_norm``
where a task defines it and ``acc`` where not (BoolQ, WinoGrande, LAMBADA).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from automl_prune.errors import UserError

from .lm_eval_backend import evaluate_with_lm_eval, require_lm_eval
from .scoring import Request, encode_pair, loglikelihoods
from .summary import finish
from .tasks import TASKS, Item, format_docs, load_docs, parse_tasks


@dataclass
class PreparedTask:
    name: str
    items: list[Item]
    requests: list[Request]
    info: dict


def _stderr(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    return float(np.std(values, ddof=1) / math.sqrt(n))


def check_limit(limit: Any) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise UserError(f"the zero-shot limit must be a positive integer (documents per task), got {limit!r}")
    return limit


class ZeroShotSuite:
    """The requests of ``tasks`` (first ``limit`` documents each), tokenized with ``tokenizer``."""

    def __init__(self, tasks: str | list[str], tokenizer: Any, *, limit: int | None = None,
                 data_dir: str | os.PathLike | None = None, add_special_tokens: bool | None = None):
        self.tasks = parse_tasks(tasks)
        self.limit = check_limit(limit)
        self.add_special_tokens = add_special_tokens
        self.prepared: dict[str, PreparedTask] = {}
        for name in self.tasks:
            docs, info = load_docs(name, data_dir=data_dir, limit=self.limit)
            items = format_docs(name, docs)
            requests = [encode_pair(tokenizer, c, x, add_special_tokens) for it in items
                        for c, x in zip(it.contexts, it.continuations)]
            self.prepared[name] = PreparedTask(name, items, requests, info)

    def evaluate(self, model: nn.Module, *, batch_size: int = 8, device: torch.device | str | None = None,
                 progress: bool = True) -> dict:
        """``{"tasks": {task: metrics}, "average": {...}, ...}`` for ``model`` as it is now."""
        results: dict[str, dict] = {}
        for name, task in self.prepared.items():
            start = time.perf_counter()
            lls = loglikelihoods(model, task.requests, batch_size=batch_size, device=device, progress=progress,
                                 desc=f"zero-shot {name}")
            results[name] = dict(score_items(name, task.items, lls), data=task.info,
                                 seconds=round(time.perf_counter() - start, 3))
        return finish(results, backend="builtin", limit=self.limit)


def score_items(task: str, items: list[Item], lls: list[tuple[float, bool]]) -> dict:
    """lm-eval's per-document metrics, averaged: acc, acc_norm (where the task has it), ppl (LAMBADA)."""
    spec = TASKS[task]
    per: dict[str, list[float]] = {m: [] for m in spec.metrics}
    k = 0
    for item in items:
        n = len(item.contexts)
        chunk = lls[k : k + n]
        k += n
        if spec.output_type == "loglikelihood":
            ll, greedy = chunk[0]
            per["acc"].append(float(greedy))
            per["ppl"].append(ll)  # aggregated below
            continue
        scores = np.array([ll for ll, _ in chunk])
        per["acc"].append(float(int(np.argmax(scores)) == item.gold))
        if "acc_norm" in per:
            lengths = np.array([float(len(c)) for c in item.choices])
            per["acc_norm"].append(float(int(np.argmax(scores / lengths)) == item.gold))
    if k != len(lls):
        raise ValueError(f"{task}: {len(lls)} log-likelihoods for {k} requests")
    out: dict[str, Any] = {}
    for metric, values in per.items():
        if metric == "ppl":
            mean_ll = sum(values) / max(len(values), 1)
            out["ppl"] = math.exp(-mean_ll) if -mean_ll < 700 else float("inf")
        else:
            out[metric] = sum(values) / max(len(values), 1)
            out[f"{metric}_stderr"] = _stderr(values)
    out["n"] = len(items)
    return out


BACKENDS = ("builtin", "lm-eval")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise UserError(f"unknown zero-shot backend {backend!r}; choose {' or '.join(BACKENDS)}")
    if backend == "lm-eval":
        require_lm_eval()
    return backend


def evaluate_zero_shot(model: nn.Module, tokenizer: Any, tasks: str | list[str], *, limit: int | None = None,
                       data_dir: str | os.PathLike | None = None, batch_size: int = 8,
                       device: torch.device | str | None = None, backend: str = "builtin",
                       add_special_tokens: bool | None = None, progress: bool = True) -> dict:
    """Zero-shot accuracy of ``model`` on ``tasks`` (names, or one comma-separated string).

    Returns ``{"tasks": {task: {"acc", "acc_norm" (where defined), "ppl" (LAMBADA), "n", ...}},
    "average": {"acc", "acc_norm", "tasks"}, "backend", "limit", "subset"}``. ``limit`` keeps the
    first N documents of each task. ``data_dir`` is a folder laid out like ``shared/data`` (task
    files under ``zeroshot/``); without it (and without $AUTOML_PRUNE_DATA_DIR) the tasks come from
    the Hugging Face hub. ``add_special_tokens``: None keeps the tokenizer's default (as lm-eval's
    HFLM), True/False forces it (e.g. True for a BOS the model needs). ``backend="lm-eval"`` runs
    the same tasks through ``lm_eval.simple_evaluate`` on the in-memory model.
    """
    names = parse_tasks(tasks)
    check_limit(limit)
    check_backend(backend)
    if backend == "lm-eval":
        return evaluate_with_lm_eval(model, tokenizer, names, limit=limit, data_dir=data_dir, batch_size=batch_size,
                                     add_special_tokens=add_special_tokens)
    suite = ZeroShotSuite(names, tokenizer, limit=limit, data_dir=data_dir, add_special_tokens=add_special_tokens)
    return suite.evaluate(model, batch_size=batch_size, device=device, progress=progress)


def format_table(result: dict) -> str:
    """A plain-text table of the per-task metrics and the average."""
    rows = [("task", "n", "acc", "acc_norm", "ppl")]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}" if abs(v) <= 1 else f"{v:.3f}"

    for name, r in result["tasks"].items():
        rows.append((name, str(r["n"]), fmt(r.get("acc")), fmt(r.get("acc_norm")), fmt(r.get("ppl"))))
    avg = result["average"]
    rows.append((f"average ({avg['tasks']} tasks)", "", fmt(avg["acc"]), fmt(avg["acc_norm"]), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, lines[1])
    return "\n".join(lines)
