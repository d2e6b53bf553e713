"""Studies that cannot be corrupted (issue 18), with real SQLite storages and real second processes
on the tiny Llama: resume state that is data, fingerprints, one driver per study, stale trials after
kill -9, resumed samplers, malformed storage URLs."""

from __future__ import annotations

import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from automl_prune.cli import main
from automl_prune.errors import UserError
from automl_prune.search.study.config import load_config
from automl_prune.search.run import run_search
from automl_prune.search.study.storage import STALE, masked
from study_configs import tiny_front_config, tiny_study_config

NO_FINAL = {"top": 0, "fidelity_sample": 0, "baselines": []}

# a test objective that takes `seconds` per candidate (layer_recon's value), so that a second
# process can be caught while a trial runs; imported by the driver subprocesses
SLOW = textwrap.dedent('''
    import time
    from objectives import make_objective
    from objectives.base import Objective, register

    @register
    class Slow(Objective):
        name = "test_slow"

        def __init__(self, *, seconds=0.5):
            self.seconds, self.inner = seconds, make_objective("layer_recon")

        def prepare(self, ctx):
            self.inner.prepare(ctx)

        def __call__(self, ctx, result, report=None):
            time.sleep(self.seconds)
            return self.inner(ctx, result)
''')


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")


def _driver(tmp_path: Path, config: Path, out: Path, *extra: str) -> subprocess.Popen:
    """A real second process running ``automl-prune search`` with the slow objective registered."""
    (tmp_path / "slow_objective.py").write_text(SLOW)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import slow_objective; from automl_prune.cli import main; "
            "sys.exit(main(sys.argv[2:]))")
    return subprocess.Popen([sys.executable, "-c", code, str(tmp_path), "search", "--config", str(config), "--out", str(out),
                             "--no-final", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _count(out: Path, state: str) -> int:
    db = out / "study.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("select count(*) from trials where state = ?", (state,)).fetchone()[0]
    except sqlite3.OperationalError:  # tables not there yet
        return 0


def _wait(predicate, timeout: float = 240.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("timed out waiting for the driver")


def _slow_config(tmp_path, tiny_llama_dir, data_dir, trials: int, seconds: float = 0.6, **over):
    return tiny_study_config(tmp_path, tiny_llama_dir, data_dir, objectives=[{"name": "test_slow", "params": {"seconds": seconds}}],
                             searcher={"name": "random", "seed": 0}, budget={"trials": trials}, final=NO_FINAL, **over)


# ----- resume state is data ----------------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_pymoo_resume_file_is_never_unpickled(tmp_path, tiny_llama_dir, data_dir):
    path = tiny_front_config(tmp_path, tiny_llama_dir, data_dir, searcher={"name": "pymoo-nsga3", "seed": 0, "population": 4})
    out = tmp_path / "run"
    run_search(load_config(path, {"budget.trials": 8}), out, progress=False, final=False)
    payload = _Payload()
    payload.marker = tmp_path / "owned"
    (out / "pymoo.pkl").write_bytes(pickle.dumps(payload))  # what an attacker (or a truncated write) leaves
    run_search(load_config(path, {"budget.trials": 12}), out, progress=False, final=False)
    assert not (tmp_path / "owned").exists()
    assert sum(t.state == TrialState.COMPLETE for t in _study(out).get_trials()) >= 12


def test_pymoo_resumed_from_the_study_equals_an_uninterrupted_run(tmp_path, tiny_llama_dir, data_dir):
    path = tiny_front_config(tmp_path, tiny_llama_dir, data_dir, searcher={"name": "pymoo-nsga3", "seed": 0, "population": 4})
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_search(load_config(path, {"budget.trials": 22}), straight, progress=False, final=False)
    run_search(load_config(path, {"budget.trials": 13}), resumed, progress=False, final=False)  # stops mid-generation
    run_search(load_config(path, {"budget.trials": 22}), resumed, progress=False, final=False)

    def individuals(out):
        rows = {}
        for t in _study(out).get_trials(states=(TrialState.COMPLETE,)):
            if "pymoo" in t.user_attrs:
                rows[(t.user_attrs["pymoo"]["generation"], t.user_attrs["pymoo"]["index"])] = (t.params, t.values)
        return rows

    a, b = individuals(straight), individuals(resumed)
    assert len(a) >= 16 and a == b  # the same points, the same values, none scored twice
    assert len(_study(resumed).get_trials()) == len(_study(straight).get_trials())


# ----- fingerprints --------------------------------------------------------------------------------
def test_a_study_of_another_experiment_is_refused_before_the_model_loads(tmp_path, tiny_llama_dir, data_dir, capsys,
                                                                          monkeypatch):
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, budget={"trials": 3}, final=NO_FINAL)
    out = tmp_path / "run"
    assert main(["search", "--config", str(path), "--out", str(out), "--no-final"]) == 0
    before = {p: (out / p).read_bytes() for p in ("config.yaml", "meta.json")}
    trials_before = [(t.number, t.state, t.values) for t in _study(out).get_trials()]
    loaded = []
    monkeypatch.setattr("automl_prune.search.execution.setup.load_model", lambda *a, **k: loaded.append(1))  # only observes
    other = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, name="other.yaml", budget={"trials": 6}, final=NO_FINAL,
                              calibration={"source": "c4", "nsamples": 4, "seqlen": 64, "seed": 5})
    capsys.readouterr()
    assert main(["search", "--config", str(other), "--out", str(out), "--no-final"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "calibration" in err and "--out" in err
    assert not loaded and [(t.number, t.state, t.values) for t in _study(out).get_trials()] == trials_before
    assert {p: (out / p).read_bytes() for p in before} == before  # the record of the old trials is untouched
    monkeypatch.undo()
    # the same experiment with a larger budget resumes
    assert main(["search", "--config", str(path), "--out", str(out), "--no-final", "--trials", "4"]) == 0
    assert sum(t.state == TrialState.COMPLETE for t in _study(out).get_trials()) == 4


# ----- one driver per study --------------------------------------------------------------------------
def test_a_second_driver_is_refused_and_the_study_holds_the_budget(tmp_path, tiny_llama_dir, data_dir):
    config = _slow_config(tmp_path, tiny_llama_dir, data_dir, trials=8)
    out = tmp_path / "run"
    first = _driver(tmp_path, config, out)
    try:
        _wait(lambda: _count(out, "COMPLETE") >= 1)
        second = _driver(tmp_path, config, out)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0] and "another automl-prune driver" in lines[0]
        _, err1 = first.communicate(timeout=300)
        assert first.returncode == 0, err1
    finally:
        first.kill()
    trials = _study(out).get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 8  # nothing scored twice


# ----- kill -9 -------------------------------------------------------------------------------------
def test_kill_9_then_resume_loses_nothing_and_retries_the_trial_in_flight(tmp_path, tiny_llama_dir, data_dir):
    config = _slow_config(tmp_path, tiny_llama_dir, data_dir, trials=8, seconds=1.0)
    out = tmp_path / "run"
    driver = _driver(tmp_path, config, out)
    try:
        _wait(lambda: _count(out, "COMPLETE") >= 3 and _count(out, "RUNNING") == 1)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    before = {t.number: (t.params, t.values) for t in _study(out).get_trials(states=(TrialState.COMPLETE,))}
    running = [t for t in _study(out).get_trials() if t.state == TrialState.RUNNING]
    assert len(running) == 1
    resumed = _driver(tmp_path, config, out)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    trials = _study(out).get_trials()
    complete = {t.number: (t.params, t.values) for t in trials if t.state == TrialState.COMPLETE}
    assert all(complete[n] == v for n, v in before.items())  # 0 completed lost
    stale = trials[running[0].number]
    assert stale.state == TrialState.FAIL and stale.user_attrs["error"] == STALE
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == stale.number]
    # the retry is the same candidate (a trial killed while it was being asked holds only part of its parameters)
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    assert stale.params.items() <= retry[0].params.items()
    assert len(complete) == 8  # the budget counts completed candidates, the stale one not among them
    assert len({json.dumps(p, sort_keys=True) for p, _ in complete.values()}) == 8
    report = (out / "report.md").read_text()
    assert "1 of the failed trials were stale" in report and "1 retried" in report


# ----- resumed samplers -------------------------------------------------------------------------------
def test_a_resumed_sampler_proposes_new_candidates(tmp_path, tiny_llama_dir, data_dir):
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, searcher={"name": "tpe", "seed": 0, "n_startup_trials": 20},
                             final=NO_FINAL)
    out = tmp_path / "run"
    run_search(load_config(path, {"budget.trials": 8}), out, progress=False, final=False)
    run_search(load_config(path, {"budget.trials": 12}), out, progress=False, final=False)
    trials = _study(out).get_trials()
    seen = [json.dumps(t.params, sort_keys=True) for t in trials[:8]]
    assert len(trials) == 12 and not any(json.dumps(t.params, sort_keys=True) in seen for t in trials[8:])


# ----- storage URLs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("url, words", [
    ("garbage", "not a database URL"),
    ("foo://host/db", "unknown database kind"),
    ("sqlite:////no/such/folder/study.db", "does not exist"),
    ("postgresql://user:s3cret@127.0.0.1:1/db", "cannot open"),
])
def test_a_malformed_storage_url_is_one_line_and_leaves_nothing(tmp_path, tiny_llama_dir, data_dir, capsys, url, words):
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, final=NO_FINAL)
    out = tmp_path / "run"
    rc = main(["search", "--config", str(path), "--out", str(out), "--storage", url, "--no-final"])
    err = capsys.readouterr().err.strip()
    if "postgresql" in url and "is not installed" in err:  # no psycopg here: refused before connecting
        words = "is not installed"
    assert rc == 2 and len(err.splitlines()) == 1 and words in err, err
    assert "s3cret" not in err
    assert not out.exists()


def test_masked_hides_the_password():
    assert masked("postgresql://me:pw@db.example:5432/x") == "postgresql://me:***@db.example:5432/x"
    assert masked("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def test_user_error_is_what_a_refusal_raises(tmp_path):
    from automl_prune.search.study.lock import FileLock

    first = FileLock(tmp_path / "x.lock", "the study").acquire()
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        FileLock(tmp_path / "x.lock", "the study").acquire()
    first.release()
    FileLock(tmp_path / "x.lock", "the study").acquire().release()


def test_a_lease_in_a_server_storage_refuses_a_second_driver_until_released_or_expired(tmp_path):
    """The lease used for storages without a lock file (PostgreSQL, MySQL), here on a real SQLite
    storage: one holder at a time; an expired lease (its driver died) is taken over."""
    from automl_prune.search.study import lock as L

    waits = []  # the lease's own sleep (nothing global is patched): recorded, not waited

    def lease(**kw):
        return L.LeaseLock(study, "the study 's'", sleep=waits.append, **kw)

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s")
    first = lease().acquire()
    assert waits == [L.LeaseLock.SETTLE_S]  # it waited for a concurrent writer before trusting its lease
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):
        lease().acquire()
    first.release()
    second = lease().acquire()
    second._stop.set()  # its driver "dies": no more renewals
    held = study.user_attrs[L.LEASE_ATTR]
    with pytest.raises(UserError, match=f"pid {os.getpid()}"):  # a clock just before the expiry: still held
        lease(clock=lambda: held["expires"] - 1).acquire()
    third = lease(clock=lambda: held["expires"] + 1).acquire()  # just after: taken over
    assert study.user_attrs[L.LEASE_ATTR]["token"] == third.token
    assert study.user_attrs[L.LEASE_ATTR]["expires"] == held["expires"] + 1 + L.LEASE_S
    third.release()
    assert study.user_attrs[L.LEASE_ATTR] == {}


def test_weights_changed_in_place_are_refused_before_any_trial(tmp_path, tiny_llama_dir, data_dir):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    path = tiny_study_config(tmp_path, model, data_dir, budget={"trials": 2}, final=NO_FINAL)
    out = tmp_path / "run"
    run_search(load_config(path), out, progress=False, final=False)
    weights = next(model.glob("*.safetensors"))
    tensors = load_file(weights)
    name = next(k for k in tensors if k.endswith("mlp.up_proj.weight"))
    tensors[name] = tensors[name] + 0.01 * torch.randn_like(tensors[name])  # same shapes, same file size
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(UserError, match="other weights"):
        run_search(load_config(path, {"budget.trials": 4}), out, progress=False, final=False)
    assert sum(t.state == TrialState.COMPLETE for t in _study(out).get_trials()) == 2


@pytest.mark.parametrize("command", ["eval", "stats"])
def test_eval_and_stats_check_their_text_before_the_model_loads(tmp_path, capsys, command):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    flag = "--data" if command == "eval" else "--calib"
    rc = main([command, "--model", "no-such-model-anywhere", flag, str(empty)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and str(empty) in err and "no text" in err


def test_kill_9_in_the_allocation_phase_keeps_both_phases_and_resumes(tmp_path, tiny_llama_dir, data_dir):
    """A joint plan killed while the evolution's children run: the first phase's trials and stage
    values and the phase's finished children are all kept; the resumed run fails the orphan, scores
    nothing twice in the first phase and finishes the phase's budget."""
    from test_evolution import JOINT

    over = {**JOINT, "objectives": [{"name": "test_slow", "params": {"seconds": 1.5}}],
            "allocation_search": {**JOINT["allocation_search"], "budget": {"trials": 6}}}
    config = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **over)
    out = tmp_path / "run"
    url = f"sqlite:///{out / 'study.db'}"

    def phase_trials(state=None):
        # plain read-only SQL until the phase's study exists: opening the storage with Optuna while
        # the driver creates its schema would race it (both insert the schema version)
        try:
            with sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True, timeout=5) as con:
                names = {row[0] for row in con.execute("select study_name from studies")}
        except sqlite3.Error:  # no file or no tables yet
            return []
        if "automl-prune-allocation" not in names:  # the phase has not started yet
            return []
        study = optuna.load_study(study_name="automl-prune-allocation", storage=url)
        return [t for t in study.get_trials(deepcopy=False) if state is None or t.state == state]

    driver = _driver(tmp_path, config, out)
    try:
        try:
            # a generation's children are asked together: several run when the driver is killed
            _wait(lambda: len(phase_trials(TrialState.COMPLETE)) >= 2 and len(phase_trials(TrialState.RUNNING)) >= 1
                  or driver.poll() is not None, 600)
        except AssertionError:
            raise AssertionError(f"phase trials {[(t.number, t.state.name) for t in phase_trials()]}") from None
        assert driver.poll() is None, driver.communicate()[1][-3000:]
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        driver.kill()
    first = _study(out)
    stages, n_first = first.user_attrs["selection"], len(first.trials)
    done = {t.number: t.values for t in phase_trials(TrialState.COMPLETE)}
    resumed = _driver(tmp_path, config, out)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    first = _study(out)
    assert len(first.trials) == n_first and first.user_attrs["selection"] == stages  # nothing scored again
    after = {t.number: t.values for t in phase_trials(TrialState.COMPLETE)}
    assert all(after[n] == v for n, v in done.items())
    assert any(t.user_attrs.get("error") == STALE for t in phase_trials(TrialState.FAIL))
    assert (out / "best.yaml").exists()
