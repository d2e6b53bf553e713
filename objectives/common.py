"""Helpers shared by the objectives: the failure type, parameter checks, the finite-value guard."""

from __future__ import annotations

import math
from typing import Any, Iterable

from automl_prune.errors import UserError


class ObjectiveError(RuntimeError):
    """An objective could not produce a finite value for this candidate (NaN/inf outputs, a
    missing prerequisite found at scoring time). A search records the trial as failed."""


def finite(name: str, value: float) -> float:
    """``value`` as a float, or ObjectiveError when it is NaN or infinite."""
    v = float(value)
    if not math.isfinite(v):
        raise ObjectiveError(f"objective {name!r} is not finite ({v}) for this candidate")
    return v


def check_choice(objective: str, field: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise UserError(f"objective {objective!r}: field '{field}' must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_positive_int(objective: str, field: str, value: Any, *, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        what = "a positive integer" + (" or null" if optional else "")
        raise UserError(f"objective {objective!r}: field '{field}' must be {what}; got {value!r}")
    return value
