"""The caches are verified by content hashes on load: changed bytes in the statistics cache or in a
level database file (same size) are detected, reported and recomputed, never a silently different
model; a non-finite score names its layer and how to recompute the statistics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from automl_prune.calibration.dense import dense_statistics
from automl_prune.calibration.stats import LinearStats
from automl_prune.cli import build_parser
from automl_prune.errors import PruningError, UserError
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.pruning.database import LevelDatabase
from automl_prune.pruning.layer import prune_weight
from automl_prune.pruning.levels import default_step, ladder
from automl_prune.pruning.plan import PruningPlan
from tiny_models import tiny_model

WANDA = PruningPlan(metric={"name": "wanda"}, sparsity=0.6)


def _ids(n=3, seqlen=16, vocab=256, seed=0):
    return torch.randint(0, vocab, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _flip_data_byte(path: Path) -> None:
    """Flip the lowest bit of one byte in the middle of a safetensors file's tensor data (after
    its JSON header): same size, still a valid file, different values."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start + (len(raw) - start) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert path.stat().st_size == len(raw)


def _warnings_naming(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and text in r.getMessage()]


def _assert_same_stats(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for name in x:
            for f in ("sum", "sumsq", "abs_sum", "absmax", "gram"):
                u, v = getattr(x[name], f), getattr(y[name], f)
                assert (u is None and v is None) or torch.equal(u, v), (name, f)
            assert (x[name].n_tokens, x[name].n_seqs) == (y[name].n_tokens, y[name].n_seqs)


# ----- statistics cache ---------------------------------------------------------------------------
def test_a_flipped_byte_in_the_statistics_cache_is_a_miss_and_is_recomputed(tmp_path, caplog):
    model, ids = tiny_model("llama"), _ids()
    first = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert first.info["cache"] == "miss"
    entry = tmp_path / "stats" / first.info["cache_key"][:32]
    _flip_data_byte(entry / "block-0001.safetensors")
    with caplog.at_level(logging.WARNING, logger="automl_prune"):
        again = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert again.info["cache"] == "miss"
    assert _warnings_naming(caplog, str(entry)), caplog.text
    assert "hash mismatch" in caplog.text
    _assert_same_stats(again.stats, first.stats)
    # the bad entry was replaced: the next call hits and reads the original statistics
    third = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert third.info["cache"] == "hit"
    _assert_same_stats(third.stats, first.stats)


@pytest.mark.parametrize("change", ["no hashes (an entry from before)", "token counts edited"])
def test_a_statistics_cache_entry_without_hash_or_with_an_edited_manifest_is_a_miss(tmp_path, caplog, change):
    model, ids = tiny_model("llama"), _ids()
    first = dense_statistics(model, ids, cache_dir=tmp_path, progress=False)
    entry = tmp_path / "stats" / first.info["cache_key"][:32]
    manifest = json.loads((entry / "manifest.json").read_text())
    if change.startswith("no hashes"):
        manifest.pop("files"), manifest.pop("manifest_sha256")
    else:
        name = next(iter(manifest["counts"]))
        manifest["counts"][name][0] += 1
    (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="automl_prune"):
        again = dense_statistics(model, ids, cache_dir=tmp_path, progress=False)
    assert again.info["cache"] == "miss"
    assert _warnings_naming(caplog, str(entry)), caplog.text
    _assert_same_stats(again.stats, first.stats)
    assert dense_statistics(model, ids, cache_dir=tmp_path, progress=False).info["cache"] == "hit"


# ----- level database -----------------------------------------------------------------------------
def _setup(calibrated, folder: Path, plan: PruningPlan = WANDA, stats=None):
    model, calibrated_stats, _ = calibrated
    stats = stats or calibrated_stats
    mods = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in prunable_linears(b).items()}
    step = default_step([tuple(m.weight.shape) for m in mods.values()], 0.6, 2, "row")
    ladders = {k: ladder(*m.weight.shape, 0.6, step, 2, "row") for k, m in mods.items()}
    key = {"test": "integrity", "plan": plan.to_dict()}
    dense = {k: m.weight.detach().clone() for k, m in mods.items()}

    def stats_of(name):
        return stats[int(name.split(".")[0])][name.split(".", 1)[1]]

    def open_db():
        return LevelDatabase(folder, key, ladders, plan)

    return mods, ladders, dense, stats_of, open_db


def test_b_flipped_byte_in_a_level_file_is_rebuilt(calibrated, tmp_path, caplog):
    mods, ladders, dense, stats_of, open_db = _setup(calibrated, tmp_path / "db")
    open_db().build(dense, stats_of, progress=False)
    lv = max(open_db().level_values)
    path = open_db().path(lv)
    _flip_data_byte(path)

    db = open_db()  # as a new study run: build() checks every stored level first
    with caplog.at_level(logging.INFO, logger="automl_prune"):
        db.build(dense, stats_of, progress=False)
    assert _warnings_naming(caplog, str(path)), caplog.text
    assert "hash mismatch" in caplog.text and "checked the hashes" in caplog.text
    assert not db.missing()

    levels = {k: min(lv, lad.high) for k, lad in ladders.items()}
    try:
        db.swap_into(mods, dense, levels, None)
        for k, m in mods.items():
            fresh, _ = prune_weight(dense[k], stats_of(k), WANDA, ladders[k].sparsity_at(levels[k]), k.split(".", 1)[1])
            assert torch.equal(m.weight, fresh), k
    finally:
        for k, m in mods.items():  # the calibrated model is shared by the module's tests
            m.weight.data.copy_(dense[k])


def test_b_a_corrupt_level_is_refused_when_opened_and_an_unhashed_one_rebuilt(calibrated, tmp_path, caplog):
    mods, ladders, dense, stats_of, open_db = _setup(calibrated, tmp_path / "db")
    open_db().build(dense, stats_of, progress=False)
    db = open_db()
    lv = min(db.level_values)
    name = next(k for k, lad in ladders.items() if lad.low <= lv)
    _flip_data_byte(db.path(lv))
    # a reader (a worker, or a run that did not build) checks a level when it first opens it
    with pytest.raises(UserError, match=rf"{db.path(lv).name} failed its check: content hash mismatch"):
        db.entry(name, lv)
    assert db.missing() == [lv]  # removed: the next build rebuilds it
    db.build(dense, stats_of, progress=False)
    assert not db.missing()
    good = db.entry(name, lv).clone()
    # a level file without its recorded hash (a folder built before hashes were) is rebuilt, with a warning
    db.hash_path(lv).unlink()
    assert db.missing() == [lv]
    with caplog.at_level(logging.WARNING, logger="automl_prune"):
        open_db().build(dense, stats_of, progress=False)
    assert _warnings_naming(caplog, str(db.path(lv))) and "no content hash" in caplog.text
    assert torch.equal(open_db().entry(name, lv), good)


# ----- non-finite scores --------------------------------------------------------------------------
def test_c_non_finite_scores_name_the_layer_and_how_to_recompute(calibrated, tmp_path):
    model, stats, _ = calibrated
    s = stats[1]["mlp.down_proj"]
    sumsq = s.sumsq.clone()
    sumsq[3] = float("nan")
    bad = LinearStats(s.n_tokens, s.n_seqs, s.sum, sumsq, s.abs_sum, s.absmax, s.gram)
    weight = decoder_blocks(model)[1].mlp.down_proj.weight
    with pytest.raises(PruningError, match=r"non-finite scores in layer mlp\.down_proj \(.*--no-cache"):
        prune_weight(weight, bad, WANDA, 0.5, "mlp.down_proj")
    with pytest.raises(PruningError, match=r"non-finite scores in layer 1\.mlp\.down_proj \("):
        prune_weight(weight, bad, WANDA, 0.5, "mlp.down_proj", block=1)
    # the level database names the layer with its block
    corrupt = [dict(b) for b in stats]
    corrupt[1]["mlp.down_proj"] = bad
    _, _, dense, stats_of, open_db = _setup(calibrated, tmp_path / "db", stats=corrupt)
    with pytest.raises(PruningError, match=r"in layer 1\.mlp\.down_proj"):
        open_db().build(dense, stats_of, progress=False)
    # the flag the message names exists on `prune` (and `search` has none, hence the cache folder)
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert "--no-cache" in sub["prune"].format_help()
    assert "--no-cache" not in sub["search"].format_help()
