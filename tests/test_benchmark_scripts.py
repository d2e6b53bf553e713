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
