"""The seven zero-shot tasks: where their documents come from and how each becomes requests,
exactly as lm-evaluation-harness (v0.4 task YAMLs) formats them.

Every task reads documents in the schema of the Hugging Face dataset lm-eval uses (``HUB``), either
from the hub or from a local folder laid out like ``shared/data/zeroshot`` whose files are first
converted to that schema. The same lm-eval formatting then applies to both:

=============== ========================== =================================================== ===================
task            dataset (split)            context -> continuation(s)                          metrics
=============== ========================== =================================================== ===================
piqa            baber/piqa (validation)    "Question: {goal}\\nAnswer:" -> " {sol1}", " {sol2}"  acc, acc_norm
boolq           aps/super_glue boolq (val) "{passage}\\nQuestion: {question}?\\nAnswer:" ->      acc
                                           " no", " yes"
arc_easy        allenai/ai2_arc (test)     "Question: {question}\\nAnswer:" -> " {choice}"...    acc, acc_norm
arc_challenge   allenai/ai2_arc (test)     same                                                acc, acc_norm
winogrande      allenai/winogrande xl      partial evaluation: "{sentence up to _}{option}" ->  acc
                (validation)               " {rest of the sentence}"
hellaswag       Rowan/hellaswag (val)      "{activity_label}: {ctx_a} {ctx_b.capitalize()}"    acc, acc_norm
                                           (preprocessed) -> " {ending}"...
lambada_openai  EleutherAI/lambada_openai  text without its last word -> " {last word}"       acc, ppl
                (test)
=============== ========================== =================================================== ===================

Subsets: ``limit`` keeps the first N documents in dataset order (lm-eval's ``--limit``), so a
subset is deterministic and the same for both backends.

The local HellaSwag file keeps ``activity_label: ctx`` without HellaSwag's split of ``ctx`` into
``ctx_a`` and ``ctx_b``, and with ``ctx_b`` not capitalised; lm-eval capitalises ``ctx_b``. The
split is recovered as the lowercase-initial fragment after the last sentence end (what ``ctx_b`` is
in the ActivityNet items; WikiHow items have an empty or already capitalised ``ctx_b``), and
lm-eval's own ``preprocess`` is applied again (the file still has a few ``[...]`` spans that lm-eval
removes). This is the only place where the local copy can differ from the hub data.
"""

from __future__ import annotations

import bz2
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from automl_prune.data.files import file_sha256
from automl_prune.data.hub import load_hub_dataset
from automl_prune.data.sources import DATA_DIR_ENV, resolve_data_dir
from automl_prune.errors import UserError

#: lm-eval's ``target_delimiter`` (default " "): put between a context and each choice.
TARGET_DELIMITER = " "
ZEROSHOT_SUBDIR = "zeroshot"


@dataclass
class Item:
    """One document as loglikelihood requests.

    ``contexts[i]`` + ``continuations[i]`` is request i; ``choices`` are the strings whose lengths
    normalise ``acc_norm`` (lm-eval's ``doc_to_choice``); ``gold`` the index of the right request.
    A loglikelihood task (LAMBADA) has one request and ``gold`` 0.
    """

    contexts: list[str]
    continuations: list[str]
    choices: list[str]
    gold: int


@dataclass(frozen=True)
class TaskSpec:
    name: str
    output_type: str  # "multiple_choice" or "loglikelihood"
    metrics: tuple[str, ...]
    hub: tuple[str, str | None, str]  # (dataset path, config, split) as in lm-eval's YAML
    local_files: tuple[str, ...]  # under <data dir>/zeroshot
    load_local: Callable[[list[Path]], list[dict]]
    format: Callable[[dict], Item]
    process_docs: Callable[[list[dict]], list[dict]] | None = None


# ----------------------------------------------------------------------------- local readers

def _read_jsonl(path: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read '{path}' as JSON lines ({type(e).__name__}: {e}); restore the file.") from None


def _need(doc: dict, keys: tuple[str, ...], path: Path, k: int) -> None:
    missing = [key for key in keys if key not in doc]
    if missing:
        raise UserError(f"'{path}' record {k} lacks the field(s) {', '.join(missing)}; restore the file from the shared data.")


def _piqa_local(paths: list[Path]) -> list[dict]:
    docs_path, labels_path = paths
    docs = _read_jsonl(docs_path)
    labels = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
    if len(labels) != len(docs):
        raise UserError(f"'{docs_path}' has {len(docs)} items but '{labels_path}' {len(labels)} labels; restore both files.")
    out = []
    for k, (d, label) in enumerate(zip(docs, labels)):
        _need(d, ("goal", "sol1", "sol2"), docs_path, k)
        out.append({"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(label)})
    return out


def _boolq_label(value: Any) -> int:
    if isinstance(value, str):
        return {"true": 1, "false": 0}[value.strip().lower()]
    return int(bool(value))


def _boolq_local(paths: list[Path]) -> list[dict]:
    out = []
    for k, d in enumerate(_read_jsonl(paths[0])):
        _need(d, ("question", "passage"), paths[0], k)
        label = d.get("label", d.get("answer"))
        out.append({"question": d["question"], "passage": d["passage"], "idx": d.get("idx", k), "label": _boolq_label(label)})
    return out


def _arc_local(paths: list[Path]) -> list[dict]:
    """ARC's original layout (question.stem, question.choices[{text, label}]) -> allenai/ai2_arc."""
    out = []
    for k, d in enumerate(_read_jsonl(paths[0])):
        _need(d, ("question", "answerKey"), paths[0], k)
        q = d["question"]
        if isinstance(q, dict):
            question, choices = q["stem"], {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}
        else:
            question, choices = q, d["choices"]
        out.append({"id": d.get("id"), "question": question, "choices": choices, "answerKey": d["answerKey"]})
    return out


def _winogrande_local(paths: list[Path]) -> list[dict]:
    out = []
    for k, d in enumerate(_read_jsonl(paths[0])):
        _need(d, ("sentence", "option1", "option2", "answer"), paths[0], k)
        out.append({key: d[key] for key in ("sentence", "option1", "option2", "answer")})
    return out


_SENTENCE_END = re.compile(r"[.!?] ")


def split_hellaswag_ctx(ctx: str) -> tuple[str, str]:
    """Recover (ctx_a, ctx_b) from HellaSwag's joined ``ctx``: ``ctx_b`` is the lowercase-initial
    fragment after the last sentence end (ActivityNet items), else empty (see the module notes)."""
    ends = list(_SENTENCE_END.finditer(ctx))
    head, tail = (ctx[: ends[-1].start() + 1], ctx[ends[-1].end():]) if ends else ("", ctx)
    if tail[:1].islower():
        return head, tail
    return ctx, ""


def _hellaswag_local(paths: list[Path]) -> list[dict]:
    """6 lines per item: ``activity_label: ctx``, gold index, 4 endings -> Rowan/hellaswag."""
    path = paths[0]
    try:
        opener = bz2.open if path.suffix == ".bz2" else open
        with opener(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read '{path}' ({type(e).__name__}: {e}); restore the file.") from None
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) % 6:
        raise UserError(f"'{path}' has {len(lines)} lines, not 6 per item; restore the file from the shared data.")
    out = []
    for k in range(0, len(lines), 6):
        head, label, endings = lines[k], lines[k + 1].strip(), lines[k + 2 : k + 6]
        activity, sep, ctx = head.partition(": ")
        if not sep or not label.isdigit():
            raise UserError(f"'{path}' item {k // 6} is not 'activity_label: ctx' + gold index; restore the file.")
        ctx_a, ctx_b = split_hellaswag_ctx(ctx)
        out.append({"activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": endings, "label": label})
    return out


def _lambada_local(paths: list[Path]) -> list[dict]:
    out = []
    for k, d in enumerate(_read_jsonl(paths[0])):
        _need(d, ("text",), paths[0], k)
        out.append({"text": d["text"]})
    return out


# ----------------------------------------------------------------------------- lm-eval formatting

def _mc(context: str, choices: list[str], gold: int) -> Item:
    return Item([context] * len(choices), [TARGET_DELIMITER + c for c in choices], list(choices), int(gold))


def _piqa(doc: dict) -> Item:
    return _mc(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], doc["label"])


def _boolq(doc: dict) -> Item:
    return _mc(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], doc["label"])


def _arc(doc: dict) -> Item:
    labels = list(doc["choices"]["label"])
    return _mc(f"Question: {doc['question']}\nAnswer:", list(doc["choices"]["text"]), labels.index(doc["answerKey"]))


def _winogrande(doc: dict) -> Item:
    """Partial evaluation: each option fills the blank in the context; the rest of the sentence is
    the continuation scored (lm-eval's multiple-input task)."""
    sentence = doc["sentence"]
    idx = sentence.index("_")
    contexts = [sentence[:idx] + opt for opt in (doc["option1"], doc["option2"])]
    target = sentence[idx + 1:].strip()
    return Item(contexts, [TARGET_DELIMITER + target] * 2, contexts, {"1": 0, "2": 1}[str(doc["answer"])])


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py: preprocess``."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag_process(docs: list[dict]) -> list[dict]:
    """lm-eval's ``process_docs``: query = preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())."""
    out = []
    for doc in docs:
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        out.append({"query": hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
                    "choices": [hellaswag_preprocess(e) for e in doc["endings"]], "gold": int(doc["label"])})
    return out


def _hellaswag(doc: dict) -> Item:
    return _mc(doc["query"], doc["choices"], doc["gold"])


def _lambada(doc: dict) -> Item:
    words = doc["text"].split(" ")
    return Item([" ".join(words[:-1])], [" " + words[-1]], [" " + words[-1]], 0)


_ARC_FILES = {"arc_easy": "arc_easy_test.jsonl", "arc_challenge": "arc_challenge_test.jsonl"}

TASKS: dict[str, TaskSpec] = {
    "piqa": TaskSpec("piqa", "multiple_choice", ("acc", "acc_norm"), ("baber/piqa", None, "validation"),
                     ("piqa_valid.jsonl", "piqa_valid-labels.lst"), _piqa_local, _piqa),
    "boolq": TaskSpec("boolq", "multiple_choice", ("acc",), ("aps/super_glue", "boolq", "validation"),
                      ("boolq_val.jsonl",), _boolq_local, _boolq),
    "arc_easy": TaskSpec("arc_easy", "multiple_choice", ("acc", "acc_norm"), ("allenai/ai2_arc", "ARC-Easy", "test"),
                         (_ARC_FILES["arc_easy"],), _arc_local, _arc),
    "arc_challenge": TaskSpec("arc_challenge", "multiple_choice", ("acc", "acc_norm"),
                              ("allenai/ai2_arc", "ARC-Challenge", "test"), (_ARC_FILES["arc_challenge"],), _arc_local, _arc),
    "winogrande": TaskSpec("winogrande", "multiple_choice", ("acc",), ("allenai/winogrande", "winogrande_xl", "validation"),
                           ("winogrande_dev.jsonl",), _winogrande_local, _winogrande),
    "hellaswag": TaskSpec("hellaswag", "multiple_choice", ("acc", "acc_norm"), ("Rowan/hellaswag", None, "validation"),
                          ("hellaswag_val_full.txt.bz2",), _hellaswag_local, _hellaswag, _hellaswag_process),
    "lambada_openai": TaskSpec("lambada_openai", "loglikelihood", ("acc", "ppl"), ("EleutherAI/lambada_openai", "default", "test"),
                               ("lambada_test.jsonl",), _lambada_local, _lambada),
}
ALIASES = {"lambada": "lambada_openai", "arc-easy": "arc_easy", "arc-challenge": "arc_challenge"}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def parse_tasks(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
    """Canonical task names from a comma-separated string or a list ("all": the seven tasks);
    unknown names are a UserError naming the valid tasks. Repeats are dropped, order kept."""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else [str(t).strip() for t in tasks]
    names = [n for n in names if n]
    if [n.lower() for n in names] == ["all"]:
        return list(TASK_NAMES)
    if not names:
        raise UserError(f"no zero-shot task given; choose from {', '.join(TASK_NAMES)} (lambada = lambada_openai)")
    out: list[str] = []
    unknown = []
    for n in names:
        canon = ALIASES.get(n.lower(), n.lower())
        if canon not in TASKS:
            unknown.append(n)
        elif canon not in out:
            out.append(canon)
    if unknown:
        raise UserError(f"unknown zero-shot task(s) {', '.join(map(repr, unknown))}; valid tasks: {', '.join(TASK_NAMES)} "
                        "(lambada = lambada_openai)")
    return out


def zeroshot_folder(data_dir: str | os.PathLike | None) -> Path | None:
    """``<data dir>/zeroshot`` (or the data dir itself when it holds the task files directly);
    None when no data dir is given (nor $AUTOML_PRUNE_DATA_DIR): the hub is used."""
    root = resolve_data_dir(data_dir)
    if root is None:
        return None
    sub = root / ZEROSHOT_SUBDIR
    return sub if sub.is_dir() or not (root / "piqa_valid.jsonl").exists() else root


def load_docs(task: str, *, data_dir: str | os.PathLike | None = None, limit: int | None = None,
              process: bool = True) -> tuple[list[dict], dict]:
    """The first ``limit`` documents of ``task`` and their provenance; with ``process`` after
    lm-eval's ``process_docs`` (HellaSwag), else in the hub dataset's schema."""
    spec = TASKS[parse_tasks([task])[0]]
    folder = zeroshot_folder(data_dir)
    if folder is not None:
        paths = [folder / f for f in spec.local_files]
        for p in paths:
            if not p.is_file():
                raise UserError(f"missing zero-shot data file '{p}'; point --data-dir (or {DATA_DIR_ENV}) at a folder whose "
                                f"{ZEROSHOT_SUBDIR}/ holds {', '.join(spec.local_files)}, or leave both unset to load "
                                f"{spec.hub[0]} from the Hugging Face hub.")
        docs = spec.load_local(paths)
        total = len(docs)
        info = {"source": "local", "files": [str(p) for p in paths], "sha256": [file_sha256(p) for p in paths]}
    else:
        path, name, split = spec.hub
        dataset = load_hub_dataset(path, name, split=split, note=f"Zero-shot task '{spec.name}' reads it from there; with "
                                   f"--data-dir it reads {ZEROSHOT_SUBDIR}/{spec.local_files[0]} instead.")
        total = len(dataset)
        n = total if limit is None else min(limit, total)
        docs = [dict(dataset[i]) for i in range(n)]
        info = {"source": "hub", "dataset": path, "config": name, "split": split,
                "fingerprint": getattr(dataset, "_fingerprint", None)}
    if limit is not None:
        docs = docs[:limit]
    if process and spec.process_docs is not None:
        docs = spec.process_docs(docs)
    info.update(documents_available=total, subset=f"first {len(docs)}")
    return docs, info


def format_docs(task: str, docs: list[dict]) -> list[Item]:
    spec = TASKS[task]
    return [spec.format(d) for d in docs]
