"""A test objective that fails on every second candidate it scores (its own count: each study, and
each Ray worker, makes its own instance, so the order tests run in does not matter). Importing this
module registers it; the Ray workers of the contract suite import it through their setup hook."""

from __future__ import annotations

from objectives.base import Objective, register


@register
class Flaky(Objective):
    name = "test_flaky"

    def __call__(self, ctx, result, report=None):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls % 2 == 0:
            raise FloatingPointError("synthetic failure")
        return float(self.calls)


def setup() -> None:
    """Ray's worker_process_setup_hook: the import above has registered the objective."""
