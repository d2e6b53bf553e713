"""The per-layer level database (EvoPress): every prunable layer pruned once at each level of its
ladder (``levels.py``) with one plan's metric, mask refinement and weight update, kept on disk, so
that an allocation candidate costs a swap of stored layers and a forward pass instead of a prune.

- One-shot only: each layer is pruned from the dense model's statistics, independently of the
  others, which is what makes a stored layer valid in every combination. (Sequential pruning
  recomputes statistics on the outputs of already pruned blocks, so a layer's result would depend
  on the levels chosen before it; a sequential plan is refused.)
- What is stored: without a weight update, the mask (1 byte per weight; the pruned layer is the
  dense weight with the mask applied); with SparseGPT or ADMM, the updated weights in the model's
  dtype. Swapping gives exactly the weights ``prune_model`` gives for the same per-layer sparsities.
- Keyed like the statistics cache: model fingerprint, calibration statistics, the plan's metric,
  group, pattern, refinement and update with their settings, and the ladders. A folder built for
  another key is refused, never reused.
- Built one level at a time (one safetensors file per level, written atomically): an interrupted
  build resumes with the missing levels.
- Verified: each level file's sha256 is written (atomically) to ``level_<l>.sha256`` before the
  level file is renamed into place, so a level file never exists without its hash (except in a
  folder built before hashes were recorded). ``build()`` checks every present level file once
  (a few seconds per GB), removes those that fail (changed bytes, no hash) with a warning naming
  the file, and rebuilds them; ``entry()`` checks a level not checked yet in this process when it
  first opens it, and refuses (removing it, so the next build rebuilds it) one that fails.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..integrity import hash_problem, sha256_file, write_atomic
from ..progress import progress_bar
from .layer import prune_weight, zeroed
from .levels import LayerLadder
from .masks import group_count
from .plan import PruningPlan

log = logging.getLogger(__name__)
FORMAT = 1


def base_fields(plan: PruningPlan) -> dict:
    """What of a plan the stored layers depend on (everything but the per-layer sparsities)."""
    d = plan.model_dump(mode="json")
    return {k: d[k] for k in ("metric", "group", "pattern", "update", "refine", "admm", "dsnot")}


def database_key(*, model_fingerprint: str, statistics_key: str, plan: PruningPlan, ladders: dict[str, LayerLadder]) -> dict:
    return dict(format=FORMAT, model_fingerprint=model_fingerprint, statistics=statistics_key, plan=base_fields(plan),
                ladders={k: [v.rows, v.cols, v.group, v.low, list(v.zeros)] for k, v in ladders.items()})


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class LevelDatabase:
    """Stored pruned layers of one key under ``folder`` (``meta.json`` + ``level_<l>.safetensors``)."""

    def __init__(self, folder: str | Path, key: dict, ladders: dict[str, LayerLadder], plan: PruningPlan,
                 dtype: torch.dtype = torch.float32):
        if plan.mode != "one-shot":
            raise UserError("a level database prunes every layer one-shot from the dense statistics; "
                            "use mode: one-shot (sequential pruning makes a layer depend on the levels before it)")
        if plan.nm is not None:
            raise UserError(f"a level database needs an unstructured pattern; {plan.pattern} fixes every layer's sparsity")
        self.folder, self.key, self.ladders, self.plan = Path(folder), key, ladders, plan
        self.kind = "mask" if plan.update == "none" else "weight"
        self.dtype = dtype
        self._handles: dict[int, object] = {}
        self._verified: set[int] = set()  # levels whose file passed its hash in this process
        meta = self.folder / "meta.json"
        if meta.exists():
            stored = json.loads(meta.read_text())
            if stored.get("key") != key:
                diff = sorted(k for k in set(key) | set(stored.get("key", {})) if key.get(k) != stored.get("key", {}).get(k))
                raise UserError(f"the level database in {self.folder} was built for another setting (differs in: "
                                f"{', '.join(diff)}); remove that folder or use another cache directory")
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(meta, json.dumps(dict(key=key, kind=self.kind), indent=1).encode())

    # ----- layout -------------------------------------------------------------------------------
    @property
    def level_values(self) -> list[int]:
        lo = min(v.low for v in self.ladders.values())
        hi = max(v.high for v in self.ladders.values())
        return list(range(lo, hi + 1))

    def path(self, level: int) -> Path:
        return self.folder / f"level_{level:+d}.safetensors"

    def hash_path(self, level: int) -> Path:
        return self.folder / f"level_{level:+d}.sha256"

    def missing(self) -> list[int]:
        """Levels without a level file or without its recorded hash (not checked: see ``verify``)."""
        return [lv for lv in self.level_values if not (self.path(lv).exists() and self.hash_path(lv).exists())]

    def size_bytes(self) -> int:
        per = 1 if self.kind == "mask" else torch.empty((), dtype=self.dtype).element_size()
        return sum(v.rows * v.cols * len(v.zeros) * per for v in self.ladders.values())

    def describe(self) -> str:
        n = sum(len(v.zeros) for v in self.ladders.values())
        return (f"{len(self.ladders)} layers x up to {len(self.level_values)} levels ({n} pruned layers, "
                f"{self.kind}s, {self.size_bytes() / 2**20:.0f} MiB on disk) in {self.folder}")

    # ----- build --------------------------------------------------------------------------------
    @torch.no_grad()
    def build(self, dense: dict[str, torch.Tensor], stats_of: Callable[[str], object], *, progress: bool = True) -> None:
        """Check the stored levels (``verify``), then prune and store every missing one (a level file
        appears only once complete, after its hash)."""
        self.verify()
        todo = self.missing()
        if not todo:
            return
        log.info("level database: building %d of %d levels: %s", len(todo), len(self.level_values), self.describe())
        total = sum(1 for lv in todo for v in self.ladders.values() if v.low <= lv <= v.high)
        bar = progress_bar(total=total, desc="level database", unit="layer", enabled=progress)
        try:
            for lv in todo:
                tensors = {}
                for name, lad in self.ladders.items():
                    if not lad.low <= lv <= lad.high:
                        continue
                    block, layer = name.split(".", 1)
                    new, _ = prune_weight(dense[name], stats_of(name), self.plan, lad.sparsity_at(lv), layer, block=int(block))
                    tensors[name] = (new == 0).contiguous() if self.kind == "mask" else new.to(self.dtype).contiguous()
                    bar.update(1)
                tmp = self.path(lv).with_suffix(".tmp")
                save_file(tensors, str(tmp), metadata={"level": str(lv)})
                write_atomic(self.hash_path(lv), sha256_file(tmp).encode())  # just written: from the page cache
                os.replace(tmp, self.path(lv))
                self._handles.pop(lv, None)
                self._verified.add(lv)
        finally:
            bar.close()

    # ----- verification -------------------------------------------------------------------------
    def check(self, level: int) -> str | None:
        """Why the present file of ``level`` fails its recorded hash; None when it passes."""
        try:
            recorded = self.hash_path(level).read_text().strip() if self.hash_path(level).exists() else None
            return hash_problem(recorded, sha256_file(self.path(level)))
        except OSError as exc:
            return f"unreadable ({exc})"

    def verify(self) -> list[int]:
        """Check every present level file not checked yet in this process against its recorded
        hash; remove those that fail, with a warning naming the file (``missing()`` then lists
        them). Returns the removed levels."""
        todo = [lv for lv in self.level_values if lv not in self._verified and self.path(lv).exists()]
        if not todo:
            return []
        start, size, bad = time.perf_counter(), 0, []
        for lv in todo:
            size += self.path(lv).stat().st_size
            problem = self.check(lv)
            if problem is None:
                self._verified.add(lv)
            else:
                log.warning("level database: %s: %s; removed, it will be rebuilt", self.path(lv), problem)
                self._remove(lv)
                bad.append(lv)
        log.info("level database: checked the hashes of %d level files (%.2f GiB) in %.1f s%s", len(todo), size / 2**30,
                 time.perf_counter() - start, f"; {len(bad)} failed" if bad else "")
        return bad

    def _remove(self, level: int) -> None:
        self._handles.pop(level, None)
        self._verified.discard(level)
        self.path(level).unlink(missing_ok=True)
        self.hash_path(level).unlink(missing_ok=True)

    # ----- read ---------------------------------------------------------------------------------
    def entry(self, name: str, level: int) -> torch.Tensor:
        """The stored mask (True = pruned) or weights of layer ``name`` at ``level`` (the level's
        file is checked against its hash when first opened, unless already checked)."""
        if level not in self._handles:
            if not self.path(level).exists():
                raise UserError(f"the level database in {self.folder} has no level {level}; build it first")
            if level not in self._verified:
                problem = self.check(level)
                if problem is not None:
                    self._remove(level)
                    raise UserError(f"the level database file {self.path(level)} failed its check: {problem}; "
                                    f"it was removed, and the next run of the study rebuilds it")
                self._verified.add(level)
            self._handles[level] = safe_open(str(self.path(level)), framework="pt")
        return self._handles[level].get_tensor(name)

    def levels_of(self, plan: PruningPlan, n_blocks: int) -> dict[str, int] | None:
        """The level of every layer when ``plan`` is this database's plan at per-layer sparsities on
        the ladders; None when it is not (then the plan is pruned, not swapped)."""
        if plan.mode != "one-shot" or base_fields(plan) != base_fields(self.plan):
            return None
        out = {}
        for name, lad in self.ladders.items():
            z = group_count(lad.group_size, plan.sparsity_of(name, n_blocks))
            i = z - lad.zeros[0]
            step = (lad.zeros[1] - lad.zeros[0]) if len(lad.zeros) > 1 else 1
            if i % step or not 0 <= i // step < len(lad.zeros) or lad.zeros[i // step] != z:
                return None
            out[name] = lad.low + i // step
        return out

    @torch.no_grad()
    def swap_into(self, modules: dict[str, torch.nn.Linear], dense: dict[str, torch.Tensor], levels: dict[str, int],
                  current: dict[str, int] | None) -> None:
        """Set every layer whose level differs from ``current`` from the stored entry."""
        for name, lv in levels.items():
            if current is not None and current.get(name) == lv:
                continue
            e = self.entry(name, lv)
            w = modules[name].weight
            if self.kind == "mask":  # the dense weight under the stored mask, zeroed as prune_weight zeroes it
                w.data.copy_(dense[name])
                zeroed(w.data, e.to(w.device), inplace=True)
            else:
                w.data.copy_(e.to(device=w.device, dtype=w.dtype))
