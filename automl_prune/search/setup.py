"""Load what a study needs once: model, calibration statistics, probe and held-out windows."""

from __future__ import annotations

import logging

from ..calibration.dense import dense_statistics
from ..data import calibration_windows, evaluation_windows
from ..models.adapters import needs_bos
from ..models.loading import load_model
from .config import StudyConfig
from .context import SearchContext

log = logging.getLogger(__name__)


def build_context(config: StudyConfig, *, progress: bool = True) -> SearchContext:
    """The loaded context of a study: dense one-shot statistics with Gram matrices (cached on disk)."""
    loaded = load_model(config.model, dtype=config.dtype, device=config.device, cache_dir=config.cache_dir)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.info["device"]
    bos = needs_bos(model)
    c = config.calibration
    calib = calibration_windows(c.source, tok, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed, data_dir=config.data_dir,
                                split=c.split, text_field=c.text_field, bos=bos)
    p = config.probe
    probe = calibration_windows(p.source or c.source, tok, nsamples=p.nsamples, seqlen=p.seqlen, seed=p.seed,
                                data_dir=config.data_dir, split=c.split if p.source is None else None,
                                text_field=c.text_field if p.source is None else None, bos=bos)
    h = config.heldout
    heldout = evaluation_windows(h.source, tok, seqlen=h.seqlen, max_windows=h.windows, data_dir=config.data_dir, bos=bos)
    stats = dense_statistics(model, calib.input_ids, with_gram=True, device=device, cache_dir=config.cache_dir,
                             windows_info=calib.info, progress=progress)
    log.info("statistics: cache %s (%.1f s)", stats.info["cache"], stats.info["seconds"])
    info = dict(model=loaded.info, calibration=calib.info, probe=probe.info, heldout=heldout.info, statistics=stats.info,
                mode="one-shot")
    return SearchContext(model=model, stats=stats.stats, probe_ids=probe.input_ids, heldout_ids=heldout.input_ids,
                         device=device, tokenizer=tok, info=info)
