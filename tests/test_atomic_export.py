"""Outputs appear whole or not at all (atomic.py): a model export is written beside its target and
renamed into place, so a process killed during the export leaves nothing, or the previous complete
export, where the model should be; small result files are replaced by a rename."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from automl_prune import atomic
from automl_prune.cli import main


# ----------------------------------------------------------------------------- the helpers
def test_write_text_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "best.yaml"
    atomic.write_text_atomic(path, "a: 1\n")
    atomic.write_text_atomic(path, "a: 2\n")
    assert path.read_text() == "a: 2\n" and sorted(p.name for p in tmp_path.iterdir()) == ["best.yaml"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_file(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".md"  # writers that go by the suffix still work
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_atomic_dir_replaces_an_existing_folder_only_at_the_end(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic.atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        assert (target / "old.txt").exists() and not (target / "new.txt").exists()
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"] and [p.name for p in target.iterdir()] == ["new.txt"]


def test_search_outputs_are_replaced_whole(tmp_path, monkeypatch):
    """best.yaml, trials.csv, the plots and report.md are renamed into place: rewritten, they leave
    no temporary beside them; a rewrite that fails half-way leaves the earlier file."""
    import optuna

    from automl_prune.search.outputs import writer as outputs

    study = optuna.create_study()
    for value, sparsity in ((1.0, 0.5), (0.5, 0.6)):
        trial = study.ask()
        trial.suggest_float("x", 0, 1)
        trial.set_user_attr("plan", {"metric": {"name": "wanda"}, "sparsity": sparsity})
        study.tell(trial, value)
    outputs.write_outputs(study, tmp_path, ["layer_recon"], {}, None)
    written = sorted(p.name for p in tmp_path.iterdir())
    assert {"best.yaml", "trials.csv", "report.md", "history.png"} <= set(written)
    report = (tmp_path / "report.md").read_text()
    monkeypatch.setattr(atomic, "move_into_place", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        outputs.write_outputs(study, tmp_path, ["layer_recon"], {"note": "changed"}, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == written and (tmp_path / "report.md").read_text() == report
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["sparsity"] == 0.6


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_writer_are_cleared_and_a_previous_export_restored(tmp_path):
    target, pid = tmp_path / "export", dead_pid()
    old, tmp = tmp_path / f".export.old-{pid}", tmp_path / f".export.tmp-{pid}"
    for folder in (old, tmp):
        folder.mkdir()
        (folder / "plan.yaml").write_text(folder.name)
    live = tmp_path / f".export.tmp-{os.getppid()}"  # a writer still running: left alone
    live.mkdir()
    atomic.clear_stale(target)  # killed between renaming the old export aside and the new one in
    assert (target / "plan.yaml").read_text() == old.name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["export", live.name])


# ----------------------------------------------------------------------------- SIGKILL during a real export
def prune_argv(model: Path, out: Path, sparsity: str, offload: str = "none") -> list[str]:
    return ["prune", "--model", str(model), "--device", "cpu", "--method", "magnitude", "--sparsity", sparsity, "--no-eval",
            "--offload", offload, "--out", str(out)]


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def kill_during_export(argv: list[str], out: Path) -> Path:
    """Run ``automl-prune argv`` in a subprocess that pauses in the export once the weights are
    written (the test hook of export.py); SIGKILL it as soon as new weights appear anywhere beside
    or in ``out``. Returns the folder of the killed writer's temporary export."""
    env = dict(os.environ, AUTOML_PRUNE_TEST_EXPORT_PAUSE="300", OMP_NUM_THREADS="1")
    start = time.time_ns()
    proc = subprocess.Popen([sys.executable, "-m", "automl_prune.cli", *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    try:
        while not any(p.stat().st_mtime_ns >= start for p in out.parent.glob("*/*.safetensors")):
            assert proc.poll() is None, f"the prune ended (rc {proc.returncode}) before its export: {proc.stdout.read()}"
            assert time.monotonic() < deadline, "no export began in 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return out.with_name(f".{out.name}.tmp-{proc.pid}")


@pytest.mark.parametrize("offload", ["none", "cpu"])  # save_pretrained, and the block-streamed save_streamed
def test_sigkill_during_a_fresh_export_leaves_no_model_at_the_target(tiny_llama_dir, tmp_path, offload):
    out = tmp_path / "pruned"
    tmp = kill_during_export(prune_argv(tiny_llama_dir, out, "0.5", offload), out)
    assert not out.exists(), "a half-written model was left at the target"
    assert tmp.is_dir()  # the killed writer's temporary folder, beside the target ...
    atomic.clear_stale(out)  # ... is cleared by the next writer of the target
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigkill_while_replacing_an_export_leaves_the_previous_one(tiny_llama_dir, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(prune_argv(tiny_llama_dir, out, "0.5")) == 0
    before = folder_digest(out)
    assert {"model.safetensors", "config.json", "plan.yaml", "metrics.json"} <= set(before)
    kill_during_export(prune_argv(tiny_llama_dir, out, "0.7"), out)
    assert folder_digest(out) == before, "the previous export was changed"
    assert yaml.safe_load((out / "plan.yaml").read_text())["sparsity"] == 0.5
    assert main(prune_argv(tiny_llama_dir, out, "0.7")) == 0  # the next export replaces it and clears the leftovers
    assert yaml.safe_load((out / "plan.yaml").read_text())["sparsity"] == 0.7
    assert [p.name for p in tmp_path.iterdir()] == ["pruned"]
