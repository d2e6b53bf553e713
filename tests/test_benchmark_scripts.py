"""Smoke runs of the benchmark scripts on the tiny Llama: they run end to end and write their
tables (the figures themselves come from full runs quoted in the README)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    # --resume refuses rows written with other calibration windows
    other = subprocess.run([*cmd[:cmd.index("--nsamples") + 1], "3", *cmd[cmd.index("--nsamples") + 2:], "--resume"],
                           capture_output=True, text=True, timeout=900)
    assert other.returncode != 0 and "different settings" in other.stderr


def test_quality_table_smoke(tiny_llama_dir, data_dir, tmp_path):
    out = tmp_path / "quality"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality_table.py"), "--model", str(tiny_llama_dir),
           "--nsamples", "4", "--seqlen", "64", "--eval-seqlen", "64", "--eval-windows", "2", "--targets", "0.5,2:4",
           "--methods", "magnitude,wanda,owl,sparsegpt,searched", "--zero-shot-limit", "2",
           "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    cells = {(r["method"], r["target"], r["variant"]): r for r in report["rows"]}
    # the cells that apply, and only those
    assert ("owl", "0.5", "sequential") in cells and ("owl", "2:4", "one-shot") not in cells
    assert ("magnitude", "0.5", "sequential") not in cells and ("sparsegpt", "0.5", "one-shot + SparseGPT update") not in cells
    assert ("searched", "2:4", "one-shot + SparseGPT update") in cells
    assert cells[("wanda", "0.5", "one-shot + SparseGPT update")]["plan"]["update"] == "sparsegpt"
    assert cells[("wanda", "0.5", "sequential")]["plan"]["mode"] == "sequential"
    # zero-shot on the one-shot cells: seven tasks, accuracies in [0, 1]
    zs = cells[("wanda", "0.5", "one-shot")]["zero_shot"]
    assert len(zs["tasks"]) == 7 and 0 <= zs["acc"] <= 1 and "zero_shot" not in cells[("wanda", "0.5", "sequential")]
    assert all(abs(r["realised_sparsity"] - 0.5) < 0.02 for r in report["rows"])
    # --resume computes nothing more when every cell is there
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(json.loads(out.with_suffix(".json").read_text())["rows"]) == len(report["rows"])
    md = out.with_suffix(".md").read_text()
    assert "**2:4 (N:M)**" in md and "wanda + OWL" in md
    assert md.index("**0.5 (unstructured)**") < md.index("**2:4 (N:M)**")
    out.with_suffix(".md").unlink()  # --render rebuilds the table from the JSON alone
    render = subprocess.run(cmd + ["--render"], capture_output=True, text=True, timeout=300)
    assert render.returncode == 0 and out.with_suffix(".md").read_text() == md


def test_scaling_smoke(tiny_llama_dir, data_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from study_configs import tiny_study_config

    config = tiny_study_config(tmp_path, tiny_llama_dir, data_dir)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scaling.py"), "--config", str(config),
           "--models", f"tiny-64x2,tiny-128x3,{tiny_llama_dir}", "--tokenizer", str(tiny_llama_dir),
           "--candidates", "2", "--stem", "smoke", "--results-dir", str(tmp_path / "results")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert rows["tiny-128x3"]["prunable_params"] > rows["tiny-64x2"]["prunable_params"] > 0
    # a 64-wide, 2-block Llama: 4 attention projections of 64 x 64 and 3 MLP matrices of 64 x 168 per block
    assert rows["tiny-64x2"]["prunable_params"] == 2 * (4 * 64 * 64 + 3 * 64 * 168)
    assert all(r["candidate_seconds"] > 0 and r["capture_seconds"] > 0 for r in result["rows"])
    assert result["slope"] is not None
    assert "candidates / min" in (tmp_path / "results" / "smoke.md").read_text()


def test_executor_throughput_smoke(tiny_llama_dir, data_dir, tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from study_configs import tiny_study_config

    config = tiny_study_config(tmp_path, tiny_llama_dir, data_dir)
    cmd = [sys.executable, str(ROOT / "benchmarks" / "executor_throughput.py"), "--config", str(config), "--trials", "3",
           "--settings", "local,ray x1", "--stem", "smoke", "--results-dir", str(tmp_path / "results")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert [r["setting"] for r in result["rows"]] == ["local", "ray x1"]
    assert all(r["trials"] == 3 for r in result["rows"])


def test_objective_fidelity_smoke(tiny_llama_dir, data_dir, tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "objective_fidelity.py"), "--model", str(tiny_llama_dir),
           "--data-dir", str(data_dir), "--nsamples", "4", "--seqlen", "64", "--probe-nsamples", "2",
           "--heldout-seqlen", "64", "--heldout-windows", "2", "--targets", "0.5", "--random", "2",
           "--only", "layer_recon fisher,kl", "--stem", "smoke", "--results-dir", str(tmp_path / "results")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "AUTOML_PRUNE_CACHE": str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    summary = result["targets"]["0.5"]["summary"]
    assert summary["n_plans"] >= 3 and set(summary["objectives"]) == {"layer_recon fisher", "kl"}
    assert -1 <= summary["objectives"]["kl"]["spearman"] <= 1


def test_polish_fidelity_smoke(polished_front, tmp_path):
    _, run_folder = polished_front
    cmd = [sys.executable, str(ROOT / "benchmarks" / "polish_fidelity.py"), "--run", str(run_folder), "--point", "0.4",
           "--results-dir", str(tmp_path / "results")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "polish_fidelity_0.4.json").read_text())
    assert report["n"] == 7 and report["wanda"]["start"] == "wanda"
    assert all(r["ppl"] > 1 for r in report["rows"]) and -1 <= report["spearman"] <= 1
    assert report["objective_best"]["objective"] == min(r["objective"] for r in report["rows"])
    # the polished plan of final.json is among the candidates, with the same held-out value (same plan, same windows)
    final = json.loads((run_folder / "final.json").read_text())
    polished = next(r for r in final["rows"] if r["kind"] == "searched" and r["target"] == 0.4)
    assert any(abs(r["ppl"] - polished["ppl"]) < 1e-6 * polished["ppl"] for r in report["rows"])
    bad = subprocess.run([*cmd[:-4], "--point", "0.5", "--results-dir", str(tmp_path / "results")], capture_output=True,
                         text=True, timeout=900)
    assert bad.returncode != 0 and "does not polish" in bad.stderr
    # re-scoring on the polishing objective's own window reproduces the study's values; on 3 windows (the
    # probe grown from 2) it gives other values, and the held-out figures of the first run are reused
    for windows in (1, 3):
        again = subprocess.run([*cmd, "--rescore-windows", str(windows)], capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        rescored = json.loads((tmp_path / "results" / "polish_fidelity_0.4.json").read_text())
        assert [r["ppl"] for r in rescored["rows"]] == [r["ppl"] for r in report["rows"]]
        assert rescored["rescore_windows"] == windows and "rescored" in rescored["scores"]
        same = [r["rescored"] == pytest.approx(r["objective"], rel=1e-5) for r in rescored["rows"]]
        assert all(same) if windows == 1 else not any(same)
    text = (tmp_path / "results" / "polish_fidelity_0.4.md").read_text()
    assert "`kl` (1 probe windows)" in text and "`kl` on 3 probe windows" in text


def test_memory_scaling_smoke(tiny_llama_dir, data_dir, tmp_path):
    """Every phase and offload mode in its own process on two depths of a tiny Llama; the table, the
    memory model's estimate per row, the growth and wall-time lines."""
    cmd = [sys.executable, str(ROOT / "benchmarks" / "memory_scaling.py"), "--models", "tiny-64x2,tiny-64x4",
           "--phases", "wanda,candidate", "--offload", "none,disk", "--nsamples", "2", "--seqlen", "32",
           "--data-dir", str(data_dir), "--stem", "smoke", "--results-dir", str(tmp_path / "results")]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "smoke.json").read_text())
    assert [(r["model"], r["phase"], r["offload"]) for r in result["rows"]] == [
        (m, p, o) for m in ("tiny-64x2", "tiny-64x4") for p in ("wanda", "candidate") for o in ("none", "disk")]
    assert all(r["peak_rss_mib"] >= r["loaded_rss_mib"] > 0 and r["model_mib"] > 0 for r in result["rows"])
    assert {r["blocks"] for r in result["rows"]} == {2, 4}
    assert set(result["growth"]) == {"none", "disk"} and set(result["growth"]["disk"]) == {"wanda", "candidate"}
    table = (tmp_path / "results" / "smoke.md").read_text()
    assert "Growth of the peak" in table and "Wall time offload disk / in memory" in table and "| disk |" in table
    bad = subprocess.run([*cmd[:cmd.index("--phases") + 1], "wanda,nope", *cmd[cmd.index("--phases") + 2:]],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "unknown phases" in bad.stderr
