"""What scoring one trial yields (:class:`Outcome`) and the values measured so far (:class:`Memo`):
the record the study keeps, independent of who scored it (execution/evaluate.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class Outcome:
    """``state`` complete (``values`` set), pruned (stopped early) or fail (``attrs['error']``);
    ``attrs`` are the trial's user attributes (plan, canonical key, mask hash, seconds, reuse)."""

    state: Literal["complete", "pruned", "fail"]
    values: list[float] | None = None
    attrs: dict = field(default_factory=dict)


@dataclass
class Memo:
    """Values already measured, by canonical key and by mask hash."""

    by_key: dict[str, list[float]] = field(default_factory=dict)
    by_mask: dict[str, list[float]] = field(default_factory=dict)
