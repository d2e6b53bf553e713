"""Sparsity levels per layer (EvoPress's database grid): pure arithmetic, no model.

Every prunable layer gets a ladder of sparsity levels around its base sparsity (the uniform
target, or an OWL / AlphaPruning allocation); moving one layer one level up and another one level
down changes the number of pruned weights by ``+step`` and ``-step``, so any level vector whose
levels sum to zero prunes *exactly* as many weights as the base (the level-switch mutation keeps
the total sparsity exact, not approximately).

Exactness needs the step to be a whole number of weights in every comparison group: with the
per-row group (Wanda, BaWA, ...) a level adds ``step / rows`` pruned weights to every row, so the
step is a multiple of every layer's row count. The default step follows EvoPress
(``prune.py``: ``0.5 * min(s, 1 - s) / levels * hidden**2`` weights), rounded to that multiple.
A layer's ladder stops ``levels`` steps either side of its base, or earlier where it would prune
nothing or every weight of a group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .masks import group_count

LEVEL_GROUPS = ("row", "matrix")


@dataclass(frozen=True)
class LayerLadder:
    """One layer's ladder: ``zeros[i]`` pruned weights per group at level ``low + i``."""

    rows: int
    cols: int
    group: str
    low: int
    zeros: tuple[int, ...]

    @property
    def high(self) -> int:
        return self.low + len(self.zeros) - 1

    @property
    def group_size(self) -> int:
        return self.cols if self.group == "row" else self.rows * self.cols

    def zeros_at(self, level: int) -> int:
        if not self.low <= level <= self.high:
            raise ValueError(f"level {level} is outside this layer's ladder [{self.low}, {self.high}]")
        return self.zeros[level - self.low]

    def sparsity_at(self, level: int) -> float:
        """The sparsity that prunes exactly ``zeros_at(level)`` weights per group (see group_count)."""
        return round(self.zeros_at(level) / self.group_size, 10)


def default_step(shapes: list[tuple[int, int]], sparsity: float, levels: int, group: str) -> int:
    """EvoPress's step in weights for a model whose largest layer input is the hidden size, rounded
    to a multiple of every layer's row count (per-row group) so that each level is whole rows."""
    hidden = min(min(r, c) for r, c in shapes)
    raw = 0.5 * min(sparsity, 1.0 - sparsity) / levels * hidden * hidden
    unit = 1
    if group == "row":
        for r, _ in shapes:
            unit = unit * r // math.gcd(unit, r)
    return max(unit, int(round(raw / unit)) * unit)


def _group_shape(rows: int, cols: int, group: str) -> tuple[int, int]:
    """(weights per group, groups) of a ``rows x cols`` layer compared per ``group``."""
    if group not in LEVEL_GROUPS:
        raise ValueError(f"level databases support the comparison groups {LEVEL_GROUPS}, not {group!r}")
    return (cols, rows) if group == "row" else (rows * cols, 1)


def ladder(rows: int, cols: int, base_sparsity: float, step: int, levels: int, group: str, extra: int = 0) -> LayerLadder:
    """The ladder of one layer around ``base_sparsity`` (pruned as ``group_count`` prunes it, plus
    ``extra`` weights per group: see :func:`exact_extras`)."""
    size, _ = _group_shape(rows, cols, group)
    per = step // rows if group == "row" else step
    if group == "row" and step % rows:
        raise ValueError(f"step {step} is not a multiple of the layer's {rows} rows")
    base = min(group_count(size, base_sparsity) + extra, size - 1)
    down = min(levels, base // per)
    up = min(levels, (size - 1 - base) // per)
    return LayerLadder(rows, cols, group, -down, tuple(base + k * per for k in range(-down, up + 1)))


def exact_extras(layers: list[tuple[int, int, float]], group: str) -> list[int]:
    """Extra pruned weights per group (0 or 1) for each ``(rows, cols, sparsity)`` layer so that the
    base allocation prunes as many weights as the sparsities ask in total, to less than one group's
    worth of rows: ``group_count`` rounds every group down (as the references do), which at 60% of a
    576-column row prunes 345 weights, not 345.6, so a per-row uniform base alone would realise
    59.91%, not 60%. The layers that lost most to the rounding get one more weight per group first
    (ties in order); no layer exceeds its own count by more than one weight per group."""
    groups, lost = [], []
    for rows, cols, s in layers:
        size, n = _group_shape(rows, cols, group)
        groups.append(n)
        lost.append((size * float(s) - group_count(size, s)) * n)
    deficit = int(round(sum(lost)))
    extras = [0] * len(layers)
    for i in sorted(range(len(layers)), key=lambda i: (-lost[i], i)):
        if groups[i] <= deficit and lost[i] > 0:
            extras[i], deficit = 1, deficit - groups[i]
    return extras
