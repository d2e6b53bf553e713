"""A study's level database (pruning/database.py): the masks (and updated weights) of every layer
at every level of the space's ladders, built once per start plan and swapped into candidates
instead of pruning them anew. The evolution builds it in the driver; Ray workers open it."""

from __future__ import annotations

import logging

from ...errors import UserError
from ...metrics.kernel import default_group
from ...models.gguf_cache import default_cache_dir
from ...pruning.database import LevelDatabase, database_key, key_digest
from ...pruning.plan import PruningPlan

log = logging.getLogger(__name__)


def level_ladders(space) -> dict:
    """The space's ladders keyed like the context's modules (``<block>.<layer>``, block unpadded)."""
    alloc = space.allocation
    if getattr(alloc, "ladders", None) is None:
        raise UserError("searcher 'evolution' needs space.allocation {name: levels, ...}")
    return {f"{int(k.split('.', 1)[0])}.{k.split('.', 1)[1]}": v for k, v in alloc.ladders.items()}


def open_database(ctx, space, plan: PruningPlan, cache_dir=None) -> LevelDatabase:
    """The level database of ``plan`` (its metric, update, refinement) on the space's ladders, in
    the cache (``<cache>/levels/<key digest>``); not built here."""
    ladders = level_ladders(space)
    group = plan.group or default_group(plan.metric)
    want = space.allocation.config.group
    if group != want:
        raise UserError(f"the start plan's metric compares weights per {group}, but space.allocation.group is {want!r}; "
                        f"set space.allocation.group: {group}")
    stats_info = ctx.info.get("statistics", {})
    key = database_key(model_fingerprint=str(stats_info.get("model_fingerprint")),
                       statistics_key=str(stats_info.get("cache_key")), plan=plan, ladders=ladders)
    folder = default_cache_dir(cache_dir) / "levels" / key_digest(key)
    dtype = next(iter(ctx.dense.values())).dtype
    return LevelDatabase(folder, key, ladders, plan, dtype=dtype)


def attach_database(ctx, space, plan: PruningPlan, cache_dir=None, *, build: bool = True,
                    progress: bool = True) -> LevelDatabase:
    db = open_database(ctx, space, plan, cache_dir)
    log.info("level database: %s", db.describe())
    if build:
        db.build(ctx.dense, lambda name: ctx.stats[int(name.split(".", 1)[0])].get(name.split(".", 1)[1]), progress=progress)
    elif db.missing():
        raise UserError(f"the level database {db.folder} is not built (levels {db.missing()} missing)")
    ctx.levels = db
    return db
