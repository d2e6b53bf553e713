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
    # what each benchmark measured (these runs are the benchmarks' smoke tests too)
    search = json.loads((out / "tiny-search-throughput.json").read_text())
    assert search["reload_per_candidate"]["candidates"] == 1 and search["peak_rss_mib_cached"] > 0
    assert search["reload_vs_cached"] > 1  # reloading and recalibrating costs more than a cached candidate
    assert "reload-per-candidate" in (out / "tiny-search-throughput.md").read_text()
    kl = json.loads((out / "tiny-kl-cost.json").read_text())
    assert [r["tokens"] for r in kl["rows"]] == [64, 256]
    assert all(r["candidate_seconds"] > 0 and r["vs_heldout"] > 0 for r in kl["rows"])
    assert kl["heldout_tokens"] > 0 and kl["heldout_ppl"] > 1 and "/ held-out evaluation" in (out / "tiny-kl-cost.md").read_text()
    assert "plain forward" in (out / "tiny-capture-cost.md").read_text()
    memory = json.loads((out / "memory-scaling.json").read_text())
    assert {(r["blocks"], r["offload"]) for r in memory["rows"]} == {(2, "none"), (2, "disk"), (4, "none"), (4, "disk")}
    assert "done: results in" in run.stdout and "tests of the CUDA paths" not in run.stdout  # no CUDA tests on a CPU


def test_the_gpu_check_refuses_an_unknown_argument(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--devcie", "cuda"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "unknown argument --devcie" in run.stderr
