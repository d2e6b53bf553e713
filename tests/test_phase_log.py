"""Per-phase seconds and peak memory (automl_prune/phase_log.py): each phase reports its own peak,
not the process's, and an outer phase the largest of its own and its inner phases'."""

from __future__ import annotations

import sys

import pytest

from automl_prune.phase_log import PhaseLog, peak_bytes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")
MIB = 2**20


def _touch(mib: int) -> bytearray:
    block = bytearray(mib * MIB)
    for i in range(0, len(block), 4096):  # resident, not only reserved
        block[i] = 1
    return block


def test_each_phase_reports_its_own_peak_and_time():
    log = PhaseLog()
    with log.phase("big"):
        block = _touch(300)
        del block
    with log.phase("small"):
        block = _touch(10)
        del block
    big, small = log.phases["big"]["peak_mib"], log.phases["small"]["peak_mib"]
    assert big - small >= 250, log.phases  # the second phase does not inherit the first one's peak
    assert list(log.phases) == ["big", "small"] and all(p["seconds"] >= 0 for p in log.phases.values())
    assert log.phases["big"]["end_mib"] < big - 250  # what the phase freed is not what it left
    assert peak_bytes() < big * MIB


def test_an_outer_phase_keeps_the_peak_of_its_inner_phases():
    log = PhaseLog()
    with log.phase("outer"):
        with log.phase("inner"):
            block = _touch(300)
            del block
        with log.phase("after"):
            pass
    assert log.phases["outer"]["peak_mib"] >= log.phases["inner"]["peak_mib"] >= log.phases["after"]["peak_mib"] + 250


def test_a_phase_that_raises_is_still_recorded():
    log = PhaseLog()
    with pytest.raises(RuntimeError):
        with log.phase("failing"):
            raise RuntimeError("boom")
    assert "failing" in log.phases


def test_the_host_memory_is_trimmed_only_when_it_has_grown_past_the_slack():
    from automl_prune.host_memory import release_growth, trim_host_memory

    trim_host_memory()
    assert not release_growth(slack=200 * MIB)  # nothing grew since the trim
    block = _touch(300)
    assert release_growth(slack=200 * MIB)  # grew by 300 MiB: trimmed (the block itself is still held)
    assert not release_growth(slack=200 * MIB)  # measured again from there
    del block
