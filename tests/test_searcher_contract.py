"""The searcher contract (search/searchers/base.py), as Optuna tests its samplers: every searcher on every
evaluator (in this process; a pool of Ray workers on a real local Ray instance) is seeded
(two fresh studies give the same trials), starts with the named points, resumes from the study
alone (a larger budget keeps every finished trial and scores nothing twice), and fails a failing
candidate's trial, never the study."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import flaky_objective  # noqa: F401  (registers test_flaky here; the Ray workers import it in their setup hook)
from automl_prune.search.study.config import load_config
from automl_prune.search.run import run_search
from automl_prune.search.searchers.registry import SEARCHERS
from study_configs import tiny_study_config

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore::DeprecationWarning")

WANDA = {"name": "bawa", "forms": ["product"], "alpha": [0, 0], "beta": [0, 0], "gamma": [1, 1], "norms": ["l2"],
         "activations": ["l2"], "clip": False}
FRONT = {"metric": {"name": "bawa"}, "allocation": {"name": "uniform"},
         "pattern": {"name": "sparsity", "low": 0.3, "high": 0.7, "step": 0.1, "points": [0.5]}}
# each searcher on the kind of study it is for: one objective, a sparsity front, or per-layer levels
SETUPS = {
    "tpe": dict(searcher={"name": "tpe", "seed": 0, "n_startup_trials": 2}, objectives=["layer_recon"]),
    "random": dict(searcher={"name": "random", "seed": 0}, objectives=["layer_recon"]),
    "nsga3": dict(searcher={"name": "nsga3", "seed": 0, "population": 4}, space=FRONT,
                  objectives=["layer_recon", "sparsity"]),
    "pymoo-nsga3": dict(searcher={"name": "pymoo-nsga3", "seed": 0, "population": 4}, space=FRONT,
                        objectives=["layer_recon", "sparsity"]),
    "evolution": dict(searcher={"name": "evolution", "seed": 0, "offspring": 3, "survivors": 1, "stage_tokens": None},
                      space={"metric": WANDA, "allocation": {"name": "levels", "levels": 4, "base": "owl"},
                             "pattern": {"name": "unstructured", "sparsity": 0.6}},
                      objectives=["layer_recon"]),
}
GENERATIONS = ("pymoo-nsga3", "evolution")  # searchers that ask a whole generation per batch
# every pair runs with -m slow; the default test command runs every searcher locally and, on Ray, one
# of each kind (an Optuna sampler asking a trial per free worker; a generation per batch, with the
# level database on the workers): a Ray pool costs ~6 s of worker start-up per search on 2 cores
FAST_ON_RAY = ("tpe", "evolution")
PAIRS = [pytest.param(name, executor, id=f"{executor}-{name}",
                      marks=[pytest.mark.slow] if executor == "ray" and name not in FAST_ON_RAY else [])
         for executor in ("local", "ray") for name in SETUPS]


def test_every_searcher_is_in_the_contract_suite():
    assert set(SETUPS) == set(SEARCHERS)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (the evaluators join it); its workers register the test objective."""
    ray = pytest.importorskip("ray")
    tests = str(Path(__file__).resolve().parent)
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([tests, root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": "flaky_objective.setup"})
    yield
    ray.shutdown()


@pytest.fixture
def on(request):
    """The evaluator a pair runs on: ``ray`` joins the module's Ray instance."""
    def start(executor: str) -> str:
        if executor == "ray":
            request.getfixturevalue("ray_instance")
        return executor

    return start


def _config(tmp_path, tiny_llama_dir, data_dir, name: str, executor: str, trials: int, objective: str | None = None,
            file: str = "config.yaml"):
    setup = SETUPS[name]
    objectives = [{"name": o} for o in setup["objectives"]]
    if objective is not None:
        objectives[0] = {"name": objective}
    over = dict(searcher=setup["searcher"], objectives=objectives, budget={"trials": trials}, executor=executor,
                ray={"max_concurrent_trials": 2, "cpus_per_trial": 1},
                final={"top": 0, "fidelity_sample": 0, "baselines": []})
    if "space" in setup:
        over["space"] = setup["space"]
    return load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, name=file, **over))


def _trials(out):
    """The study's finished trials (named points the budget left unscored stay queued)."""
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.get_trials() if t.state != TrialState.WAITING]


def _record(trials):
    return [(t.params, t.values, t.state) for t in trials]


@pytest.mark.parametrize("name, executor", PAIRS)
def test_seeded_named_points_first_and_resumable(name, executor, on, tmp_path, tiny_llama_dir, data_dir):
    on(executor)
    config = _config(tmp_path, tiny_llama_dir, data_dir, name, executor, 7)
    first = tmp_path / "a"
    run_search(config, first, progress=False, final=False)
    trials = _trials(first)
    assert len(trials) >= 7 and all(t.state == TrialState.COMPLETE for t in trials), \
        [t.user_attrs.get("error") for t in trials]
    named = [t for t in trials if "named_point" in t.user_attrs]
    assert named and [t.number for t in named] == list(range(len(named)))  # the named points first
    # seeded: a fresh study with the same seed asks the same candidates and gets the same values
    again = tmp_path / "b"
    run_search(config, again, progress=False, final=False)
    assert _record(_trials(again)) == _record(trials)
    # resumed from the study alone: a larger budget keeps every finished trial and scores nothing twice
    bigger = _config(tmp_path, tiny_llama_dir, data_dir, name, executor, 11, file="bigger.yaml")
    run_search(bigger, first, progress=False, final=False)
    resumed = _trials(first)
    assert len(resumed) >= 11 and _record(resumed[:len(trials)]) == _record(trials)
    scored = [t.user_attrs["canonical_key"] for t in resumed if not t.user_attrs.get("reused")]
    assert len(scored) == len(set(scored))
    if executor == "ray":
        assert all("ray_node_id" in t.user_attrs for t in resumed)
    if executor == "ray" and name in GENERATIONS:  # a generation is one batch: the same trials on any evaluator
        here = tmp_path / "local"
        run_search(_config(tmp_path, tiny_llama_dir, data_dir, name, "local", 7, file="local.yaml"), here,
                   progress=False, final=False)
        local = _trials(here)
        assert [t.params for t in local] == [t.params for t in trials]
        for a, b in zip(local, trials):  # equal up to float32 summation order (the workers run their own threads)
            assert b.values == pytest.approx(a.values, rel=1e-6)
    if name == "evolution":  # the children are swapped in from the level database the driver built (on Ray too)
        children = [t for t in resumed if t.user_attrs.get("generation") is not None]
        assert children and all(t.user_attrs.get("swapped") == "level database" for t in children)


@pytest.mark.parametrize("name, executor", PAIRS)
def test_a_failing_candidate_fails_its_trial_not_the_study(name, executor, on, tmp_path, tiny_llama_dir, data_dir):
    on(executor)
    config = _config(tmp_path, tiny_llama_dir, data_dir, name, executor, 6, objective="test_flaky")
    out = tmp_path / "run"
    run_search(config, out, progress=False, final=False)
    trials = _trials(out)
    states = [t.state for t in trials]
    assert len(trials) >= 6 and TrialState.FAIL in states and TrialState.COMPLETE in states
    assert all("synthetic failure" in t.user_attrs["error"] for t in trials if t.state == TrialState.FAIL)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
