"""scripts/gpu-check.sh, the script a GPU machine runs when one is lent, run here on the CPU with
tiny settings so that it never rots: every benchmark it calls runs on the device it names and writes
its results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_with_tiny_settings(tmp_path, data_dir):
    out = tmp_path / "gpu-check"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--device", "cpu", "--tiny", "--out", str(out),
                          "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYTHON": sys.executable})
    assert run.returncode == 0, run.stderr[-3000:]
    for stem in ("tiny-search-throughput", "tiny-kl-cost", "tiny-capture-cost", "memory-scaling"):
        assert (out / f"{stem}.json").is_file() and (out / f"{stem}.md").is_file(), stem
    assert json.loads((out / "tiny-search-throughput.json").read_text())  # figures, not an empty file
    assert "done: results in" in run.stdout and "tests of the CUDA paths" not in run.stdout  # no CUDA tests on a CPU


def test_the_gpu_check_refuses_an_unknown_argument(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--devcie", "cuda"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "unknown argument --devcie" in run.stderr
