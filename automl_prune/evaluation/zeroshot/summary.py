"""The summary record of a zero-shot run, the same whichever backend scored it."""

from __future__ import annotations


def average(results: dict[str, dict]) -> dict:
    accs = [r["acc"] for r in results.values()]
    norms = [r.get("acc_norm", r["acc"]) for r in results.values()]
    return {"acc": sum(accs) / len(accs), "acc_norm": sum(norms) / len(norms), "tasks": len(accs)}


def finish(results: dict[str, dict], *, backend: str, limit: int | None) -> dict:
    return {"tasks": results, "average": average(results), "backend": backend, "limit": limit,
            "subset": "first N documents of each task in dataset order (lm-eval --limit)" if limit else "all documents"}
