"""Smoke runs of the benchmark scripts on the tiny Llama: they run end to end and write their
tables (the figures themselves come from full runs quoted in the README)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reconstruction_quality_smoke(tiny_llama_dir, data_dir, tmp_path):
    out = tmp_path / "recon"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "reconstruction_quality.py"), "--model", str(tiny_llama_dir),
           "--nsamples", "4", "--seqlen", "64", "--eval-seqlen", "64", "--eval-windows", "2", "--targets", "0.5,2:4",
           "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {(r["row"], r["target"]): r for r in report["rows"]}
    assert ("searched + ADMM update", "0.5") in rows and ("ria + channel permutation", "2:4") in rows
    assert rows[("ria + channel permutation", "2:4")]["permuted"] is True
    assert all(abs(r["realised_sparsity"] - 0.5) < 0.01 for r in report["rows"])
    assert "permuted channel order" in out.with_suffix(".md").read_text()


def test_search_throughput_with_reload_loop_smoke(tiny_llama_dir, data_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from study_configs import tiny_study_config

    config = tiny_study_config(tmp_path, tiny_llama_dir, data_dir)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "search_throughput.py"), "--config", str(config),
           "--candidates", "3", "--reload-candidates", "1", "--stem", "smoke", "--results-dir", str(tmp_path / "results")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert result["reload_per_candidate"]["candidates"] == 1
    assert result["reload_vs_cached"] > 1  # reloading and recalibrating costs more than a cached candidate
    assert result["peak_rss_mib_cached"] > 0
    assert "reload-per-candidate" in (tmp_path / "results" / "smoke.md").read_text()
