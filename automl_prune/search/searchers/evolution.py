"""``searcher: evolution``: EvoPress's evolutionary allocation search over a level database.

The space's allocation is ``levels`` (an integer level per prunable layer, search_spaces); the
metric, pattern and update are those of the start point. Each generation:

1. ``offspring`` children of the parent by level-switch mutation: ``min(U{1,3}, U{1,3})`` times,
   one layer one level down and another one level up, so every child prunes exactly as many
   weights as the base allocation; a child equal to any candidate seen before is rejected and
   drawn again;
2. every child is a trial of the Optuna study, scored by the study's fast objective (first
   stage; the same probe windows for every candidate of the study, so values compare across
   generations). Candidates are a swap of stored layers and a forward pass (the level database
   is built once, before the first generation, from the parent's plan);
3. the ``survivors`` best children and the parent (parents re-enter only here) are scored again
   on ``stage_tokens`` fresh calibration-domain tokens, a minibatch drawn per generation from a
   pool of ``stage_pool`` such minibatches (overlapping none of the calibration and probe windows;
   the held-out text is never read), all on the same minibatch; the best is the next parent.

The start is the best named point (the base allocation with the start metric, every level 0).
The generation record (parents, stage values) is kept in the study's user attributes after each
generation, and children are drawn from a per-generation seed, so a re-run (or a run resumed after
a kill) continues at the generation it stopped in, reusing the children already scored.
The selected plan is the last parent; the report compares it held out with the fast objective's
best trial (what the second stage bought).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time

from optuna.trial import TrialState

from objectives import make_objective

from ...errors import UserError
from ...pruning.plan import PruningPlan
from ..execution.levels import attach_database
from ..execution.scoring import fresh_stage_windows, score_stage
from ..study.config import StudyConfig, selection_seqlen
from ..study.results import SELECTED, SelectionRecord
from ..study.state import SearchState
from .base import Batches, GenerationSearcher

log = logging.getLogger(__name__)
ATTR = "evolution"
STAGE_SEED = 7919  # the stage windows' seed offset (distinct from the selection stages' seeds)


# ----- mutation ---------------------------------------------------------------------------------
def level_switch(levels: dict[str, int], bounds: dict[str, tuple[int, int]], rng: random.Random) -> dict[str, int]:
    """One child: ``min(U{1,3}, U{1,3})`` switches, each one layer a level down and another a level
    up (so the sum of the levels, hence the number of pruned weights, is unchanged)."""
    child = dict(levels)
    names = list(child)
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        down = [n for n in names if child[n] > bounds[n][0]]
        up = [n for n in names if child[n] < bounds[n][1]]
        if not down or not up:
            break
        a = rng.choice(down)
        b = rng.choice([n for n in up if n != a] or up)
        if a == b:
            break
        child[a] -= 1
        child[b] += 1
    return child


# ----- the loop ---------------------------------------------------------------------------------
def _setting(config: StudyConfig) -> dict:
    s = config.searcher
    return dict(seed=s.seed, offspring=s.offspring, survivors=s.survivors, stage_tokens=s.stage_tokens, stage_pool=s.stage_pool,
                calibration=config.calibration.model_dump(mode="json"), probe=config.probe.model_dump(mode="json"))


def _stage_pool(state: SearchState):
    """The second stage's pool of fresh windows (``stage_pool`` stage minibatches), drawn once."""
    s = state.config.searcher
    n, _ = selection_seqlen(state.config, s.stage_tokens)
    return fresh_stage_windows(state, s.stage_tokens, s.seed + STAGE_SEED, s.stage_pool), n


class _Stage:
    """The second stage: KL (top-512) to the dense model on a minibatch of ``stage_tokens`` drawn
    per generation from the pool of fresh windows (EvoPress draws a fresh minibatch per generation
    and stage, so that no minibatch is optimised for generation after generation); every finalist
    of a generation, the parent included, on the same minibatch."""

    def __init__(self, state: SearchState):
        self.pool, self.per = _stage_pool(state)
        self.base = state.ctx
        self.objective = make_objective("kl", topk=512)
        self.seed = state.config.searcher.seed

    def minibatch(self, generation: int) -> list[int]:
        rng = random.Random(f"stage:{self.seed}:{generation}")
        return sorted(rng.sample(range(self.pool.input_ids.shape[0]), self.per))

    def score(self, plans: list[PruningPlan], generation: int) -> list[float | None]:
        values = score_stage(self.base, self.objective, dict(enumerate(plans)),
                             windows=self.pool.input_ids[self.minibatch(generation)], label="evolution stage")
        return [values[i] for i in range(len(plans))]


class EvolutionSearcher(GenerationSearcher):
    """The generations, until the budget is spent (the record stays in the study: selection_record).
    On Ray the children are scored by the workers (each opens the database the driver built); the
    second stage runs in the driver."""

    def chosen(self) -> SelectionRecord | None:
        return selection_record(self.state, self.study.user_attrs.get(ATTR) or {})

    def batches(self) -> Batches:
        state, study, space = self.state, self.study, self.state.space
        config = state.config
        s = config.searcher
        sign = state.sign
        level_keys = [k for k in self.dists if k.startswith(space.allocation.prefix + "level.")]
        bounds = {k: (self.dists[k].low, self.dists[k].high) for k in level_keys}

        def waiting() -> list:
            return [study.ask(self.dists) for _ in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))]

        if not study.trials:  # no named point in this space (e.g. Wanda's score over the whole matrix): the base
            others = sorted(set(self.dists) - set(level_keys))
            if others:
                raise UserError(f"evolution: the space has no named start point and searches {', '.join(others)} besides "
                                "the levels; fix those parameters (one choice each): the evolution mutates the allocation only")
            study.enqueue_trial({k: 0 for k in level_keys}, user_attrs={"named_point": space.allocation.base_label})
        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            yield waiting()  # the named points first (a resumed study's retried children wait for the database)
        done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
        if not done:
            raise UserError("evolution: no start point could be scored (every named point failed); see the log")
        record = study.user_attrs.get(ATTR) or {}
        setting_key = hashlib.sha256(json.dumps(_setting(config), sort_keys=True).encode()).hexdigest()[:16]
        if record.get("key") != setting_key:
            record = dict(key=setting_key, setting=_setting(config), parents=[], stage={})
        by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
        if record["parents"]:
            parent = by_number[record["parents"][-1]]
        else:
            starts = [t for t in done if t.user_attrs.get("named_point")] or done
            parent = min(starts, key=lambda t: (sign * t.values[0], t.number))
        start_plan = PruningPlan.from_dict(parent.user_attrs["plan"])
        if state.ctx.levels is None:
            built = time.perf_counter()
            attach_database(state.ctx, space, start_plan, config.cache_dir, progress=state.progress)
            self.database_seconds = round(time.perf_counter() - built, 1)
            state.exclude_from_budget(self.database_seconds)  # budget.timeout counts the search, not the build
            log.info("level database ready in %.0f s; the search's %s s start now", self.database_seconds,
                     config.budget.timeout)
        yield waiting()  # children a killed run left running, queued again: swapped in from the database
        stage = _Stage(state) if s.stage_tokens else None
        if stage is not None:
            record["stage_pool_sha256"] = stage.pool.info["windows_sha256"]
        fixed = {k: v for k, v in parent.params.items() if k not in level_keys}
        while state.budget_left():
            g = len(record["parents"])
            rng = random.Random(f"{s.seed}:{g}")
            trials = study.get_trials(deepcopy=False)
            seen = {t.user_attrs.get("canonical_key") for t in trials if t.user_attrs.get("generation", -1) < g}
            mine = {t.user_attrs.get("canonical_key"): t for t in trials
                    if t.user_attrs.get("generation") == g and t.state == TrialState.COMPLETE}
            left = None if config.budget.trials is None else config.budget.trials - state.spent() + len(mine)
            want = s.offspring if left is None else max(0, min(s.offspring, left))
            if want == 0:
                break
            children, keys, tries = [], set(), 0
            plevels = {k: int(parent.params[k]) for k in level_keys}
            while len(children) < want and tries < 100 * s.offspring:
                tries += 1
                child = {**fixed, **level_switch(plevels, bounds, rng)}
                key = space.canonical_key(child)
                if key in seen or key in keys:
                    continue
                keys.add(key)
                children.append((key, child))
            if not children:
                log.info("evolution: no new child of trial %d could be drawn; stopping", parent.number)
                break
            scored = [mine[k] for k, _ in children if k in mine]
            scored += yield [self.queued(c, {"generation": g}) for k, c in children if k not in mine]
            ok = sorted((t for t in scored if t.state == TrialState.COMPLETE), key=lambda t: (sign * t.values[0], t.number))
            finalists = ok[:s.survivors] + [parent]
            if stage is not None:
                values = stage.score([PruningPlan.from_dict(t.user_attrs["plan"]) for t in finalists], g)
                record["stage"][str(g)] = {str(t.number): v for t, v in zip(finalists, values)}
                scored_f = [(t, v) for t, v in zip(finalists, values) if v is not None] or [(parent, 0.0)]
                best = min(scored_f, key=lambda tv: (tv[1], sign * tv[0].values[0], tv[0].number))[0]
            else:
                best = min(finalists, key=lambda t: (sign * t.values[0], t.number))
            parent = best
            record["parents"].append(parent.number)
            study.set_user_attr(ATTR, record)
            log.info("evolution: generation %d, %d children, parent trial %d (fast %.6g%s)", g + 1, len(children),
                     parent.number, parent.values[0],
                     f", stage {record['stage'][str(g)].get(str(parent.number)) or float('nan'):.6g}" if stage is not None else "")


def selection_record(state: SearchState, record: dict) -> SelectionRecord | None:
    """The evolution's choice in the shape of a selection result (final comparison, report)."""
    study = state.study
    sign = state.sign
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    if not done or not record.get("parents"):
        return None
    by_number = {t.number: t for t in done}
    fast_best = min(done, key=lambda t: (sign * t.values[0], t.number))
    selected = by_number[record["parents"][-1]]
    study.set_user_attr(SELECTED, selected.number)
    s = state.config.searcher
    stages = []
    if record.get("stage"):  # the last generation's second stage (minibatches differ between generations)
        last = str(max(int(g) for g in record["stage"]))
        scored = [(by_number[int(n)], v) for n, v in record["stage"][last].items() if v is not None and int(n) in by_number]
        scored.sort(key=lambda tv: (tv[1], tv[0].number))
        n, seqlen = selection_seqlen(state.config, s.stage_tokens)
        stages.append(dict(stage=2, tokens=s.stage_tokens, windows=n, seqlen=seqlen, generation=int(last) + 1,
                           pool_sha256=record.get("stage_pool_sha256"), seed=s.seed + STAGE_SEED,
                           candidates=[dict(trial=t.number, value=v, fast=t.values[0], named_point=t.user_attrs.get("named_point"))
                                       for t, v in scored],
                           failed=sum(v is None for v in record["stage"][last].values()), kept=[selected.number]))
    return dict(objective={"name": "kl", "params": {"topk": 512}}, selected=selected.number, fast_best=fast_best.number,
                pool=sum(len(v) for v in record["stage"].values()), stages=stages, generations=len(record["parents"]),
                searcher="evolution", seconds=None)
