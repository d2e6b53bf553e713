"""Dense (one-shot) calibration statistics, computed once and cached on disk."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import UserError
from ..models.adapters import decoder_blocks, prunable_linears
from ..models.gguf_cache import default_cache_dir
from .blocks import BlockRunner
from .cache import StatsWriter, cache_key, load_stats, model_fingerprint, save_stats
from .capture import BlockStats, capture_statistics

log = logging.getLogger(__name__)


@dataclass
class StatisticsResult:
    stats: list[BlockStats]
    info: dict = field(default_factory=dict)


def dense_statistics(
    model: nn.Module,
    input_ids: torch.Tensor,
    *,
    with_gram: bool = False,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    cache_dir=None,
    use_cache: bool = True,
    windows_info: dict | None = None,
    progress: bool = True,
    store=None,
) -> StatisticsResult:
    """Statistics of every prunable linear layer of the dense model (one-shot mode).

    Looked up in the on-disk cache first (key: model fingerprint, calibration windows, settings);
    a cache with a Gram matrix also serves a request without one. ``store``: the blocks are
    offloaded (models/offload.py); the capture streams them one at a time, each block's statistics
    are written to the cache as soon as they are complete, and the result reads one block's
    statistics at a time from there (``CachedStats``; without the cache: from the offload folder
    on ``disk``, held in memory on ``cpu``).
    """
    blocks = decoder_blocks(model)
    windows_sha = (windows_info or {}).get("windows_sha256") or _sha(input_ids)
    fingerprint = model_fingerprint(blocks, prunable_linears, store)
    base = dict(model=fingerprint, windows=windows_sha, mode="one-shot", dtype=str(next(model.parameters()).dtype))
    keys = [cache_key(**base, gram=True)] + ([] if with_gram else [cache_key(**base, gram=False)])
    root = default_cache_dir(cache_dir)
    info = dict(mode="one-shot", with_gram=with_gram, n_windows=int(input_ids.shape[0]), seqlen=int(input_ids.shape[1]),
                windows_sha256=windows_sha, model_fingerprint=fingerprint)
    start = time.perf_counter()
    if use_cache:
        for key in keys:
            stats = load_stats(root, key, lazy=store is not None)
            if stats is not None:
                info.update(cache="hit", cache_key=key, seconds=round(time.perf_counter() - start, 3))
                return StatisticsResult(stats, info)
    runner = BlockRunner(model, blocks, input_ids, batch_size=batch_size, device=device, store=store)
    key = keys[0] if with_gram else keys[-1]
    streamed_root = root if use_cache else (store.folder if store is not None and store.mode == "disk" else None)
    if streamed_root is not None and store is not None:
        writer = StatsWriter(streamed_root, key, settings=base | {"gram": with_gram})
        try:
            capture_statistics(runner, prunable_linears, mode="one-shot", with_gram=with_gram, progress=progress,
                               keep=lambda i, block_stats: writer.add(i, block_stats))
            writer.commit()
        except OSError as exc:
            raise UserError(f"could not write the statistics of the offloaded model in {streamed_root}: {exc}; "
                            "free disk space there or point --cache-dir elsewhere") from exc
        finally:
            writer.abort()
        stats = load_stats(streamed_root, key, lazy=True)
        info.update(cache="miss" if use_cache else "off", seconds=round(time.perf_counter() - start, 3), streamed=store.mode)
        if use_cache:
            info["cache_key"] = key
        return StatisticsResult(stats, info)
    stats = capture_statistics(runner, prunable_linears, mode="one-shot", with_gram=with_gram, progress=progress)
    info.update(cache="miss" if use_cache else "off", seconds=round(time.perf_counter() - start, 3))
    if use_cache:
        try:
            save_stats(root, key, stats, settings=base | {"gram": with_gram})
            info["cache_key"] = key
        except OSError as exc:  # a full disk must not lose the statistics just computed
            log.warning("could not write the statistics cache in %s: %s", root, exc)
    return StatisticsResult(stats, info)


def _sha(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.cpu().contiguous().numpy().tobytes()).hexdigest()


def calibrate(model: nn.Module, tokenizer, calibration, *, data_dir=None, bos: bool = False, with_gram: bool = True,
              batch_size: int = 4, device: torch.device | str = "cpu", cache_dir=None, use_cache: bool = True,
              progress: bool = True, store=None):
    """The windows of ``calibration`` (data/settings.Calibration) and the dense statistics on them:
    the one load -> windows -> statistics sequence of the Python API's ``calibrate`` and the search's
    context. Returns ``(windows, StatisticsResult)``."""
    from ..data import calibration_windows  # deferred: the data sources load only when windows are cut

    c = calibration
    windows = calibration_windows(c.source, tokenizer, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed, data_dir=data_dir,
                                  split=c.split, text_field=c.text_field, bos=bos)
    return windows, dense_statistics(model, windows.input_ids, with_gram=with_gram, batch_size=batch_size, device=device,
                                     cache_dir=cache_dir, use_cache=use_cache, windows_info=windows.info, progress=progress,
                                     store=store)
