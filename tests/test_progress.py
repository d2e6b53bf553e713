"""Progress off a terminal: whole lines with counts and elapsed time, at a steady interval."""

from __future__ import annotations

import os
import time
from pathlib import Path

from automl_prune.progress import LineProgress, progress_bar


def test_off_a_terminal_a_stage_prints_lines_with_counts(capsys, monkeypatch):
    monkeypatch.setenv("AUTOML_PRUNE_PROGRESS_SECONDS", "0.05")
    bar = progress_bar(range(6), desc="calibration", unit="block")
    assert isinstance(bar, LineProgress)  # pytest's captured stderr is not a terminal
    for _ in bar:
        time.sleep(0.03)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("calibration: 0/6 block, 0 s") and lines[-1].split("] ")[1].startswith("calibration: 6/6 block")
    assert 3 <= len(lines) <= 7 and all("\r" not in line for line in lines)


def test_hand_driven_refreshes_are_rate_limited_and_quiet_stages_say_nothing(capsys, monkeypatch):
    monkeypatch.setenv("AUTOML_PRUNE_PROGRESS_SECONDS", "30")
    bar = progress_bar(total=100, desc="search", unit="trial")
    for i in range(100):
        bar.n = i + 1
        bar.refresh()
    bar.close()
    assert [line.split("] ")[1] for line in capsys.readouterr().err.splitlines()] == ["search: 0/100 trial, 0 s",
                                                                                        "search: 100/100 trial, 0 s"]
    for _ in progress_bar(range(3), desc="ppl", leave=False):
        pass
    assert capsys.readouterr().err == ""  # a short transient stage
    for _ in progress_bar(range(3), desc="off", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_tests_never_write_the_users_cache():
    from automl_prune.models.gguf_cache import default_cache_dir

    root = default_cache_dir(None).resolve()
    assert root == Path(os.environ["AUTOML_PRUNE_CACHE"]).resolve()
    assert not str(root).startswith(str((Path.home() / ".cache" / "automl-prune").resolve()))
