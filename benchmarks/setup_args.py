"""Command-line options the benchmark scripts share: the model, the calibration windows and the
held-out evaluation windows (defaults: the acceptance setting of the README)."""

from __future__ import annotations

import argparse
import os


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
