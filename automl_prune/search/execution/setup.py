"""Load what a study needs once: model, calibration statistics, probe and held-out windows (the text
sources are opened and checked first, so a bad one fails before the model loads)."""

from __future__ import annotations

import logging
import time

import torch

from objectives import make_objective

from ...allocation.profile import ModelProfile
from ...calibration.dense import calibrate
from ...candidate_context import CandidateContext
from ...data import calibration_windows, check_source, evaluation_windows
from ...models.adapters import needs_bos, prunable_shapes
from ...models.gguf_cache import default_cache_dir
from ...models.loading import check_model_spec, load_model, resolve_device, resolve_dtype
from ...models.memory_model import Job, gguf_to_dequantize, memory_report
from ...phase_log import PhaseLog
from ...pruning.transfer import model_record
from ..study.config import StudyConfig
from ..study.definition import Study

log = logging.getLogger(__name__)


def build_context(config: StudyConfig, *, progress: bool = True, use_cache: bool = True) -> CandidateContext:
    """The loaded context of a study: dense one-shot statistics with Gram matrices (cached on disk
    unless ``use_cache`` is False)."""
    check_sources(config)
    phases = PhaseLog()
    start = time.perf_counter()
    with phases.phase("load model"):
        loaded = load_model(config.model, dtype=config.dtype, device=config.device, cache_dir=config.cache_dir,
                            offload=config.offload, offload_folder=config.offload_folder)
    model, tok, device, store = loaded.model, loaded.tokenizer, loaded.info["device"], loaded.store
    log.info("model %s loaded (%.1fM parameters, %s, %.0f s)", config.model, loaded.info.get("n_params", 0) / 1e6, device,
             time.perf_counter() - start)
    bos = needs_bos(model)
    c = config.calibration
    p = config.probe
    probe = calibration_windows(p.source or c.source, tok, nsamples=p.nsamples, seqlen=p.seqlen, seed=p.seed,
                                data_dir=config.data_dir, split=c.split if p.source is None else None,
                                text_field=c.text_field if p.source is None else None, bos=bos)
    h = config.heldout
    heldout = evaluation_windows(h.source, tok, seqlen=h.seqlen, max_windows=h.windows, data_dir=config.data_dir, bos=bos)
    log.info("calibration %s %d x %d, probe %d x %d, held-out %s %d x %d; statistics next", c.source, c.nsamples, c.seqlen,
             p.nsamples, p.seqlen, h.source, heldout.input_ids.shape[0], h.seqlen)
    with phases.phase("statistics"):
        calib, stats = calibrate(model, tok, c, data_dir=config.data_dir, bos=bos, device=device, cache_dir=config.cache_dir,
                                 use_cache=use_cache, progress=progress, store=store)
    log.info("statistics: cache %s (%.1f s)", stats.info["cache"], stats.info["seconds"])
    info = dict(model=loaded.info, calibration=calib.info, probe=probe.info, heldout=heldout.info, statistics=stats.info,
                mode="one-shot", data_dir=config.data_dir, phases=phases.phases,  # data_dir: objectives that read task files (zero_shot)
                plan_model=model_record(config.model, prunable_shapes(model)).model_dump())  # what its plan files record
    return CandidateContext(model=model, stats=stats.stats, probe_ids=probe.input_ids, heldout_ids=heldout.input_ids, calib_ids=calib.input_ids,
                         device=device, tokenizer=tok, info=info, store=store)


def search_memory(config: StudyConfig) -> dict | None:
    """The memory model's figures for one search worker of ``config`` (logged; refused when it does
    not fit and ``memory_check`` is on). None when the model's config cannot be read before loading."""
    device = str(resolve_device(config.device))
    report = memory_report(config.model, worker_job(config, device), cache_dir=config.cache_dir, by_phase=True)
    if report is None:
        log.info("memory: the model's config cannot be read before loading; no memory check")
        return None
    log.info("memory per worker (offload: %s, model estimate, largest in the %s phase): %s", config.offload,
             report.peak_phase, report.estimate.summary(device))
    if config.memory_check:
        ray = config.executor == "ray"
        report.check(device, what=f"a search worker of {config.model}", cache_dir=config.cache_dir,
                     offload_folder=config.offload_folder, gpus=(config.ray.gpus_per_trial if ray else 1.0) or 1.0,
                     sharers=config.ray.max_concurrent_trials if ray else 1,  # local workers share this machine's memory
                     offload_hint="offload: disk, or cpu with a GPU", skip_hint="set memory_check: false in the config")
    return report.record(config.offload)


def worker_job(config: StudyConfig, device: str | None = None) -> Job:
    """What one search worker of ``config`` does, for the memory model: its candidates' windows,
    objectives, selection stages and held-out text, and the GGUF dequantization of a cold cache."""
    device = device or str(resolve_device(config.device))
    c, p, h = config.calibration, config.probe, config.heldout
    fisher = max((make_objective(o.name, **o.params).backward_windows() for o in config.objectives), default=0)
    return Job("candidate", offload=config.offload, device=device,
               dtype_bytes=torch.empty((), dtype=resolve_dtype(config.dtype)).element_size(),
               n_windows=c.nsamples, seqlen=c.seqlen, with_gram=True, probe_tokens=p.nsamples * p.seqlen,
               probe_seqlen=p.seqlen, fisher_windows=min(fisher, p.nsamples),
               heldout_tokens=(h.windows or 0) * h.seqlen if config.final.top else 0,
               dequantize_bytes=gguf_to_dequantize(config.model, config.cache_dir),
               selection_tokens=max((st.tokens for st in config.selection.stages), default=0) if config.selection else 0)


def check_sources(config: StudyConfig) -> None:
    """Open the calibration, probe and held-out sources without a tokenizer and check that each holds
    text; a UserError names the bad one. Cheap next to loading the model, so it comes first."""
    check_model_spec(config.model)
    c, p, h = config.calibration, config.probe, config.heldout
    check_source(c.source, "calibration", data_dir=config.data_dir, split=c.split, text_field=c.text_field)
    if p.source is not None:
        check_source(p.source, "calibration", role="probe", data_dir=config.data_dir)
    check_source(h.source, "evaluation", role="held-out", data_dir=config.data_dir)


def build_profile(ctx, space, *, cache_dir=None):
    """The allocation profile of the loaded model: OWL material from the dense statistics, and the
    spectral exponents (SVDs, cached on disk by model fingerprint) only when the space needs them."""
    needs_alphas = getattr(getattr(space, "allocation", None), "name", None) == "alpha"
    key = ctx.info.get("statistics", {}).get("model_fingerprint")
    return ModelProfile.build(ctx.model, ctx.stats, with_alphas=needs_alphas, alpha_cache_dir=default_cache_dir(cache_dir),
                              alpha_cache_key=key, store=ctx.store)


def load_search(study: Study, *, progress: bool = True, use_cache: bool = True):
    """Everything ``study`` scores candidates with, loaded once: the context, the allocation profile,
    the space bound to the model, and the objectives prepared (dense references computed).
    Returns ``(ctx, profile, bound_space)``."""
    ctx = build_context(study.config, progress=progress, use_cache=use_cache)
    phases = PhaseLog(ctx.info["phases"])
    with phases.phase("profile"):
        profile = build_profile(ctx, study.space, cache_dir=study.config.cache_dir)
    space = study.space.bind(profile)
    start = time.perf_counter()
    with phases.phase("objectives"):
        for objective in study.objectives:
            objective.prepare(ctx)
    ctx.info["objectives_prepare_seconds"] = round(time.perf_counter() - start, 3)
    log.info("objectives prepared (%s; %.0f s)", ", ".join(o.name for o in study.objectives), time.perf_counter() - start)
    return ctx, profile, space
