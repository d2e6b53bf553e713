"""What the benchmark scripts share: command-line options for the model, the calibration windows
and the held-out evaluation windows (defaults: the acceptance setting of the README), and the
``--resume`` check that a results file was written for the same model and windows."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def add_model_and_data(ap: argparse.ArgumentParser, *, evaluation: bool = True) -> None:
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--calib", default="c4")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    if evaluation:
        ap.add_argument("--eval", default="wikitext2")
        ap.add_argument("--eval-seqlen", type=int, default=1024)
        ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--data-dir", default=os.environ.get("AUTOML_PRUNE_DATA_DIR"))
    ap.add_argument("--cache-dir", default=None)


def settings_fingerprint(report: dict) -> dict:
    """What must match for rows of two runs to sit in one table: model, calibration and evaluation windows."""
    m, c, e = report.get("model") or {}, report.get("calibration") or {}, report.get("evaluation") or {}
    return dict(model=m.get("gguf_sha256") or m.get("path") or m.get("spec"), calibration=c.get("windows_sha256"),
                evaluation=e.get("windows_sha256"))


def previous_report(path: Path, fresh: dict) -> dict | None:
    """The JSON report at ``path`` (for ``--resume``) if it was written with the settings of ``fresh``;
    None if there is none; exits with the difference otherwise."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    if settings_fingerprint(report) != settings_fingerprint(fresh):
        raise SystemExit(f"--resume: {path} was written with different settings ({settings_fingerprint(report)} != "
                         f"{settings_fingerprint(fresh)}); use another --out or drop --resume")
    return report


def add_device(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--device", default=None,
                    help="cpu, cuda, cuda:N or auto (default: the config's device; capture_cost: cpu)")


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously), so a timer read after
    this covers it; nothing to do on the CPU."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def write_results(results_dir: str | Path, stem: str, result: dict, md: str) -> None:
    """``<results_dir>/<stem>.json`` (the figures) and ``<stem>.md`` (the table the README quotes),
    and the table on stdout."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    (out / f"{stem}.md").write_text(md)
    print(md)

