"""The same tasks through ``lm_eval.simple_evaluate`` on the in-memory model (optional backend).

The model is wrapped as ``HFLM(pretrained=model, tokenizer=tokenizer)``. Without a data folder the
task names go to lm-eval as they are, and lm-eval loads its datasets from the hub. With a data
folder every task is lm-eval's own task config (its YAML, with its ``doc_to_text``,
``doc_to_choice``, ``process_docs`` and metrics) whose dataset is swapped for a JSON-lines file:
the local documents converted to the schema of the hub dataset (``tasks.load_docs`` before
``process_docs``), written to a temporary folder and read with ``datasets``' ``json`` builder.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from torch import nn

from automl_prune.data.hub import _one_line
from automl_prune.errors import MissingPackageError, UserError

from .summary import finish
from .tasks import TASKS, load_docs, zeroshot_folder

INSTALL = "pip install lm_eval  (or: pip install 'automl-prune[lm-eval]')"
_METRICS = {"acc": "acc,none", "acc_norm": "acc_norm,none", "ppl": "perplexity,none"}


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM  # noqa: F401
    except ImportError:
        raise MissingPackageError("lm_eval", "The lm-eval zero-shot backend", INSTALL) from None


def lm_eval_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:  # noqa: BLE001
        return None


def official_config(task_manager: Any, task: str) -> dict:
    """lm-eval's own config of ``task`` (its YAML, includes and ``!function``s resolved).
    Uses the task index of lm_eval 0.4.13 (``TaskManager._entry``, ``_yaml_loader.load_yaml``)."""
    entry = task_manager._entry(task) if hasattr(task_manager, "_entry") else None  # noqa: SLF001
    if entry is None or getattr(entry, "yaml_path", None) is None:
        raise UserError(f"lm_eval {lm_eval_version()} has no indexed task '{task}' (the lm-eval backend needs "
                        "lm_eval>=0.4.13); use --backend builtin or: pip install -U lm_eval")
    from lm_eval.tasks._yaml_loader import load_yaml

    return dict(load_yaml(entry.yaml_path, resolve_func=True))


def local_task_config(task_manager: Any, task: str, data_file: Path) -> dict:
    """lm-eval's config of ``task`` with its dataset replaced by ``data_file`` (split "test")."""
    cfg = official_config(task_manager, task)
    for key in ("tag", "group", "task_list"):
        cfg.pop(key, None)
    cfg.update(task=task, dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": {"test": str(data_file)}},
               training_split=None, validation_split=None, test_split="test", fewshot_split=None)
    return cfg


def _write_local(task: str, data_dir: Any, limit: int | None, folder: Path) -> tuple[Path, dict]:
    # lm-eval runs process_docs itself: write the documents in the hub dataset's schema
    docs, info = load_docs(task, data_dir=data_dir, limit=limit, process=False)
    path = folder / f"{task}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    return path, info


def evaluate_with_lm_eval(model: nn.Module, tokenizer: Any, tasks: list[str], *, limit: int | None = None,
                          data_dir: str | os.PathLike | None = None, batch_size: int = 8,
                          add_special_tokens: bool | None = None, samples: bool = False) -> dict:
    """``suite.evaluate_zero_shot`` with lm-eval doing the work; the same result layout. With
    ``samples`` the result also holds, per task and document (in order), lm-eval's requests
    ``(context, continuation)`` and responses ``(loglikelihood, is_greedy)``."""
    require_lm_eval()
    import lm_eval  # deferred: lm-eval is optional and heavy
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=add_special_tokens)
    manager = TaskManager()
    infos: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="automl-prune-lm-eval-") as tmp:
        if zeroshot_folder(data_dir) is not None:
            specs: list[Any] = []
            for task in tasks:
                path, infos[task] = _write_local(task, data_dir, limit, Path(tmp))
                specs.append(local_task_config(manager, task, path))
        else:
            specs = list(tasks)
            infos = {t: {"source": "hub (lm-eval's dataset_path)"} for t in tasks}
        try:
            out = lm_eval.simple_evaluate(model=lm, tasks=specs, num_fewshot=0, limit=limit, batch_size=batch_size,
                                          bootstrap_iters=0, log_samples=samples, task_manager=manager)
        except (ConnectionError, OSError) as e:  # the hub (datasets) is not reachable
            raise UserError(f"lm-eval could not load its datasets ({_one_line(e)}). If the machine is offline, pass "
                            "--data-dir (or set AUTOML_PRUNE_DATA_DIR) to a folder whose zeroshot/ holds the task files.") from e
    seconds = round(time.perf_counter() - start, 3)
    results: dict[str, dict] = {}
    for task in tasks:
        raw = out["results"][task]
        r: dict[str, Any] = {}
        for metric in TASKS[task].metrics:
            value = raw.get(_METRICS[metric])
            r[metric] = float(value) if value is not None else math.nan
        n = out.get("n-samples", {}).get(task, {})
        r["n"] = int(n.get("effective", n.get("original", 0))) if isinstance(n, dict) else int(n)
        r["data"] = dict(infos.get(task, {}), lm_eval_version=lm_eval_version())
        results[task] = r
    result = finish(results, backend="lm-eval", limit=limit)
    result["seconds"] = seconds
    if samples:
        result["samples"] = {
            task: [{"doc_id": s["doc_id"], "requests": [tuple(a[:2]) for a in s["arguments"]],
                    "loglikelihoods": [(float(r[0]), bool(r[1])) for r in s["filtered_resps"]]}
                   for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])]
            for task in tasks}
    return result
