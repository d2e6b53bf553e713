"""The Ray executor on real Ray (a local instance, and a two-node cluster started here): same
outputs and, sequentially with the same seed, the same trial values as the local executor; trials
on both nodes; a killed worker and a killed search lose no completed trial.

Every test runs its own Ray (``own_ray``): its own temp dir and, for the cluster, its own ports;
its processes are found and ended by that temp dir, never by ``ray stop`` (which ends every Ray
process of the user on the machine)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import optuna
import psutil
import pytest
from optuna.trial import TrialState

from automl_prune.search.study.config import load_config
from automl_prune.search.run import run_search
from own_ray import OwnRay
from study_configs import tiny_study_config

# the `ray` command of this interpreter's environment (found without an activated virtualenv too)
_RAY_HERE = os.path.join(os.path.dirname(sys.executable), "ray")
RAY = _RAY_HERE if os.path.exists(_RAY_HERE) else "ray"

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _config(tmp_path, tiny_llama_dir, data_dir, **over):
    """The shared tiny study, 8 trials, a light final comparison."""
    over = {"budget": {"trials": 8}, "final": {"baselines": ["wanda"], "top": 1, "fidelity_sample": 0}, **over}
    return tiny_study_config(tmp_path, tiny_llama_dir, data_dir, name="config.yaml", **over)


def _trials(out):
    return optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}").get_trials()


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")  # with the test's RAY_TMPDIR (own_ray)
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture
def own_ray(monkeypatch):
    """This test's own Ray (own_ray.py: its own temp dir, its processes found and ended by it);
    nothing of it is left running after the test."""
    own = OwnRay()
    monkeypatch.setenv("RAY_TMPDIR", own.root)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield own
    own.stop()
    assert not own.processes(), "a process of the test's Ray outlived the test"


def test_own_ray_ends_its_own_processes_only(own_ray):
    """A process started with another temp dir (another Ray on the machine, as far as the test can
    tell) is neither found nor ended; the test's own are, whatever Ray did to their names."""
    script = "import time, sys; sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(600)"
    mine = subprocess.Popen([sys.executable, "-c", script], env=_env(), stdout=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", script], env=dict(_env(), RAY_TMPDIR=own_ray.root + "-other"),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert mine.stdout.readline() == other.stdout.readline() == "up\n"
        assert [p.pid for p in own_ray.processes()] == [mine.pid]
        assert own_ray.kill() == [mine.pid]  # (and reaped it: Popen cannot see its status any more)
        assert not psutil.pid_exists(mine.pid) and other.poll() is None and own_ray.processes() == []
    finally:
        for proc in (mine, other):
            proc.kill()
            proc.wait()


def test_a_local_instance_neither_joins_nor_ends_another_ray_on_the_machine(own_ray):
    """Another Ray on the machine (as a user starts one: `ray start --head`, its own temp dir): a
    driver sharing its temp dir would join it (the control), the executor's local instance in the
    test's own dir starts a cluster of its own, and ending the test's Ray leaves the other running."""
    from automl_prune.search.execution.ray_executor import connect

    other = OwnRay()
    try:
        env = dict(_env(), RAY_TMPDIR=other.root, RAY_AUTH_MODE="disabled")
        port = _free_port()
        started = subprocess.run([RAY, "start", "--head", f"--port={port}", f"--dashboard-agent-listen-port={_free_port()}",
                                  "--num-cpus=1", "--object-store-memory=100000000", "--include-dashboard=false",
                                  "--disable-usage-stats"], capture_output=True, text=True, timeout=180, env=env)
        assert started.returncode == 0, started.stderr[-2000:]
        theirs = other.processes()
        assert theirs
        where = "import ray; ray.init(logging_level='ERROR'); print(ray.get_runtime_context().gcs_address)"
        joined = subprocess.run([sys.executable, "-c", where], capture_output=True, text=True, timeout=180, env=env)
        assert joined.stdout.strip().splitlines()[-1].endswith(f":{port}"), joined.stderr[-2000:]  # the control
        assert connect(None)  # no address: a local instance, in the test's own dir
        assert not ray.get_runtime_context().gcs_address.endswith(f":{port}")
        assert own_ray.processes()
        own_ray.stop()
        assert own_ray.processes() == [] and all(p.is_running() for p in theirs)
    finally:
        other.stop()
    assert other.processes() == []


SELECTION = {"stages": [{"tokens": 128, "keep": 2}, {"tokens": 256, "keep": 1}], "candidates": 3, "seqlen": 64,
             "objective": {"name": "kl", "params": {"topk": 64}}}


def test_ray_matches_local_executor_sequentially(tmp_path, tiny_llama_dir, data_dir, own_ray):
    path = _config(tmp_path, tiny_llama_dir, data_dir, selection=SELECTION)
    local = tmp_path / "local"
    run_search(load_config(path), local, progress=False)
    on_ray = tmp_path / "ray"
    report = run_search(load_config(path, {"executor": "ray", "ray.max_concurrent_trials": 1}), on_ray, progress=False)
    for name in ("config.yaml", "study.db", "trials.csv", "best.yaml", "report.md", "final.json", "history.png"):
        assert (on_ray / name).exists(), name
    a, b = _trials(local), _trials(on_ray)
    assert len(b) == 8 and all(t.state == TrialState.COMPLETE for t in b)
    # the same parameters in the same order; values equal up to float32 summation order (a
    # Ray worker runs torch with its own thread count, so reductions may differ by ~1e-8 relative)
    assert [t.params for t in a] == [t.params for t in b]
    for ta, tb in zip(a, b):
        assert tb.values == pytest.approx(ta.values, rel=1e-6)
    # what the reports read is recorded for Ray trials too, plus where each ran
    assert all("plan" in t.user_attrs and "ray_node_id" in t.user_attrs for t in b)
    assert [t.user_attrs.get("named_point") for t in a] == [t.user_attrs.get("named_point") for t in b]
    assert json.loads((on_ray / "meta.json").read_text())["executor"] == "ray"
    assert "Held-out comparison" in report.read_text()
    # multi-fidelity selection runs on the Ray executor's study as on the local one
    sel = [json.loads((o / "final.json").read_text())["selection"] for o in (local, on_ray)]
    assert sel[0]["selected"] == sel[1]["selected"]
    assert [[c["trial"] for c in st["candidates"]] for st in sel[0]["stages"]] == \
           [[c["trial"] for c in st["candidates"]] for st in sel[1]["stages"]]


def test_offloaded_workers_on_ray_match_the_in_memory_local_study(tmp_path, tiny_llama_dir, data_dir, own_ray):
    """Ray workers that stream the model from disk (offload: disk; on a GPU cluster the same worker
    holds one block on its device) score the same trials as the local executor holding it whole."""
    path = _config(tmp_path, tiny_llama_dir, data_dir, budget={"trials": 5})
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_search(load_config(path), local, progress=False)
    run_search(load_config(path, {"executor": "ray", "ray.max_concurrent_trials": 1, "offload": "disk"}), on_ray, progress=False)
    a, b = _trials(local), _trials(on_ray)
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.user_attrs["mask_hash"] for t in a] == [t.user_attrs["mask_hash"] for t in b]
    for ta, tb in zip(a, b):
        assert tb.values == pytest.approx(ta.values, rel=1e-6)
    assert all("ray_node_id" in t.user_attrs for t in b)
    assert json.loads((on_ray / "meta.json").read_text())["memory_model"]["offload"] == "disk"


def test_joint_plan_on_ray_matches_local(tmp_path, tiny_llama_dir, data_dir, own_ray):
    """allocation_search on Ray: both phases' candidates on actors (the phase's actors swap from the
    database the driver built of the first phase's selected plan); the same trials and values."""
    from test_evolution import JOINT

    path = _config(tmp_path, tiny_llama_dir, data_dir, **JOINT)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    run_search(load_config(path), local, progress=False)
    run_search(load_config(path, {"executor": "ray", "ray.max_concurrent_trials": 1}), on_ray, progress=False)
    phase = [optuna.load_study(study_name="automl-prune-allocation", storage=f"sqlite:///{o / 'study.db'}").get_trials()
             for o in (local, on_ray)]
    assert [t.params for t in phase[0]] == [t.params for t in phase[1]]
    for ta, tb in zip(*phase):
        assert tb.values == pytest.approx(ta.values, rel=1e-5)
    assert all("ray_node_id" in t.user_attrs for t in phase[1])
    assert (local / "best.yaml").read_text() == (on_ray / "best.yaml").read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_node_cluster_runs_trials_on_both_nodes(tmp_path, tiny_llama_dir, data_dir, own_ray):
    port = _free_port()
    env = dict(_env(), RAY_AUTH_MODE="disabled")  # a throwaway local cluster: no token (this driver has none)
    common = ["--num-cpus=1", "--object-store-memory=100000000"]

    def own_ports():  # the port a node's agent would otherwise take at its fixed default (52365)
        return [f"--dashboard-agent-listen-port={_free_port()}"]

    head = subprocess.run([RAY, "start", "--head", f"--port={port}", *own_ports(), "--resources", '{"head_slot": 1}', *common,
                           "--include-dashboard=false", "--disable-usage-stats"],
                          capture_output=True, text=True, timeout=180, env=env)
    assert head.returncode == 0, head.stderr[-2000:]
    worker = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *own_ports(), "--resources",
                             '{"worker_slot": 1}', *common], capture_output=True, text=True, timeout=180, env=env)
    assert worker.returncode == 0, worker.stderr[-2000:]
    # pymoo NSGA-III farms each generation out to two actors of one CPU each: one per node
    path = _config(tmp_path, tiny_llama_dir, data_dir, budget={"trials": 8}, executor="ray",
                   searcher={"name": "pymoo-nsga3", "seed": 0, "population": 4, "seed_named_points": False},
                   space={"metric": {"name": "bawa"}, "allocation": {"name": "uniform"},
                          "pattern": {"name": "sparsity", "low": 0.3, "high": 0.7}},
                   objectives=[{"name": "layer_recon"}, {"name": "sparsity"}],
                   ray={"address": f"127.0.0.1:{port}", "max_concurrent_trials": 2, "cpus_per_trial": 1})
    out = tmp_path / "run"
    # the search joins the cluster from its own process, as `automl-prune search --ray-address` does
    rc, output = _finish(_search(path, out, env), 400)
    assert rc == 0, output
    trials = _trials(out)
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("error") for t in trials]
    listing = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                              "print(json.dumps([(n['NodeID'], n['Resources']) for n in ray.nodes() if n['Alive']]))"
                              % f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=180, env=env)
    assert listing.returncode == 0, listing.stderr[-2000:]
    nodes = dict(json.loads(listing.stdout.strip().splitlines()[-1]))
    ran_on = {t.user_attrs["ray_node_id"] for t in trials}
    assert ran_on <= set(nodes)
    slots = {k for node in ran_on for k in nodes[node] if k.endswith("_slot")}
    assert slots == {"head_slot", "worker_slot"}, f"trials ran on {ran_on}; nodes {nodes}"


def _search(path, out, env, *extra):
    """The CLI in its own process group, its output in a log file next to the run folder."""
    log = open(out.parent / f"{out.name}-{time.monotonic_ns()}.log", "w+")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([sys.executable, "-m", "automl_prune", "search", "--config", str(path), "--out", str(out),
                             "--no-final", *extra], env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    proc.log = log
    return proc


def _finish(proc, timeout):
    """Wait for the process; returns (exit code, the tail of its output)."""
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    proc.log.seek(0)
    return proc.returncode, proc.log.read()[-3000:]


def _completed(out) -> int:
    """Completed trials, read with plain read-only SQL (opening the storage with Optuna while the
    search creates it would race its schema setup)."""
    path = out / "study.db"
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # tables not created yet
        return 0


def _wait_for(out, n, proc, timeout=240):
    """Wait until the study holds ``n`` completed trials; returns them."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            proc.log.seek(0)
            raise AssertionError(f"the search ended early:\n{proc.log.read()[-3000:]}")
        if _completed(out) >= n:
            return [t for t in _trials(out) if t.state == TrialState.COMPLETE]
        time.sleep(0.5)
    raise AssertionError(f"fewer than {n} completed trials after {timeout} s")


def test_killed_worker_loses_no_completed_trial(tmp_path, tiny_llama_dir, data_dir, own_ray):
    # a budget long enough that the search is still running when the worker dies (the tiny model
    # scores a candidate in a fraction of a second)
    path = _config(tmp_path, tiny_llama_dir, data_dir, budget={"trials": 40}, ray={"max_failures": 2})
    out = tmp_path / "run"
    proc = _search(path, out, _env(), "--executor", "ray")  # chosen on the command line, as a user would
    before = _wait_for(out, 2, proc)
    os.kill(int(before[-1].user_attrs["worker_pid"]), signal.SIGKILL)  # the Ray actor running the trials
    rc, output = _finish(proc, 300)
    assert rc == 0, output
    trials = _trials(out)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.FAIL)]
    assert len(finished) == 40
    assert len({t.user_attrs.get("worker_pid") for t in finished} - {None}) == 2, "the worker was restarted in a new process"
    kept = {t.number: (t.params, t.values) for t in trials}
    assert all(kept[t.number] == (t.params, t.values) for t in before)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 39


def test_interrupted_search_resumes_the_same_study(tmp_path, tiny_llama_dir, data_dir, own_ray):
    path = _config(tmp_path, tiny_llama_dir, data_dir, budget={"trials": 10}, executor="ray")
    out = tmp_path / "run"
    proc = _search(path, out, _env())
    before = _wait_for(out, 4, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the search and the Ray instance it started
    proc.wait()
    own_ray.kill()  # whatever of that instance left the process group
    again = _search(path, out, _env())
    rc, output = _finish(again, 400)
    assert rc == 0, output
    trials = _trials(out)
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 10
    kept = {t.number: (t.params, t.values) for t in trials}
    assert all(kept[t.number] == (t.params, t.values) for t in before)
