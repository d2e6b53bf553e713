"""The Python API: what the command line does, as functions that return typed results.

    import automl_prune as ap

    model = ap.load("smollm2-135m")                   # alias, Hugging Face folder or hub id, .gguf file
    quick = ap.Calibration(source="wiki-offline", nsamples=32, seqlen=512)
    pruned = ap.prune(model, "wanda", sparsity=0.5, calibration=quick)       # in place; statistics cached
    print(pruned.realised_sparsity, pruned.plan.describe())
    print(ap.evaluate(model, ap.Heldout(source="wiki-offline", seqlen=1024, windows=8)).ppl)
    found = ap.search("my-study.yaml", out="runs/my-study", trials=40)        # a study config (or StudyConfig)
    print(found.best_plan, found.report)

``prune`` takes a named method (``ap.METHODS``), a plan file (a search's best.yaml) or a
``PruningPlan``; the model as a spec (loaded, after the memory check) or as ``ap.load``'s result (pruned
in place). The calibration statistics are captured once per model and calibration and cached on
disk, so a second prune with the same calibration reads them. The CLI (``automl-prune prune``,
``search``) calls these functions.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .calibration.dense import calibrate as dense_calibration
from .data import calibration_windows, check_source, evaluation_windows
from .data.settings import QUICK, Calibration, Heldout
from .errors import UserError
from .evaluation.kl import DenseReference
from .evaluation.perplexity import perplexity
from .export import export_pruned
from .models.adapters import needs_bos, prunable_shapes
from .models.loading import LoadedModel, check_model_spec, load_model, resolve_device, resolve_dtype
from .models.memory_model import Job, memory_report
from .provenance import environment
from .pruning.apply import needs_statistics, prune_model
from .pruning.methods import METHODS, plan_for_method
from .pruning.plan import PruningPlan
from .pruning.transfer import check_plan, model_record, transfer_plan

log = logging.getLogger("automl_prune")

__all__ = ["QUICK", "METHODS", "Calibration", "Heldout", "LoadedModel", "PruningPlan", "Perplexity", "PruneResult",
           "SearchResult", "Statistics", "as_plan", "calibrate", "load", "prune", "evaluate", "search"]


@dataclass
class Perplexity:
    """Perplexity of a model on one held-out text (the papers' protocol: every window's seqlen - 1
    predictions), with the windows' provenance."""

    ppl: float
    nll: float
    n_windows: int
    n_tokens: int
    seconds: float
    data: dict = field(default_factory=dict)


@dataclass
class Statistics:
    """A model's dense calibration statistics (per block and layer: activation norms, Gram matrices),
    captured once (``calibrate``) and handed to any number of one-shot prunes of that model."""

    calibration: Calibration
    windows: object  # the calibration windows (data.TokenWindows): a sequential prune re-runs them
    stats: list
    info: dict


@dataclass
class PruneResult:
    """A pruned model: the plan as applied (checked against the model, with its record), what it
    pruned, and the held-out figures (dense and pruned per text; KL when asked)."""

    model: LoadedModel
    plan: PruningPlan
    realised_sparsity: float
    seconds: float
    layers: dict
    evaluation: dict[str, dict] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # what metrics.json records
    permutations: dict = field(default_factory=dict)
    out: Path | None = None


@dataclass
class SearchResult:
    """A finished (or budget-cut) study run: its folder, report, selected plan file and final comparison."""

    out: Path
    report: Path
    best_plan: Path | None
    final: dict | None
    meta: dict


def load(model: str, *, dtype: str = "float32", device: str = "auto", cache_dir=None, offload: str = "none",
         offload_folder=None) -> LoadedModel:
    """A causal LM ready for pruning: an offline alias (``smollm2-135m``, ``gemma3-270m``), a Hugging
    Face folder or hub id, or a ``.gguf`` file (dequantized once, cached). ``offload`` ``cpu`` /
    ``disk`` keeps the decoder blocks off the device (one at a time on it)."""
    check_model_spec(model)
    return load_model(model, dtype=dtype, device=device, cache_dir=cache_dir, offload=offload,
                      offload_folder=offload_folder)


def calibrate(model: LoadedModel, calibration: Calibration | None = None, *, data_dir=None, bos: bool | None = None,
              batch_size: int = 4, use_cache: bool = True, cache_dir=None, progress: bool = True) -> Statistics:
    """The dense model's calibration statistics on ``calibration`` (default the papers' protocol), with
    Gram matrices (what every metric and update reads); cached on disk per model and calibration."""
    c = calibration or Calibration()
    check_source(c.source, "calibration", data_dir=data_dir, split=c.split, text_field=c.text_field)
    windows, computed = dense_calibration(model.model, model.tokenizer, c, data_dir=data_dir,
                                          bos=needs_bos(model.model) if bos is None else bos, batch_size=batch_size,
                                          device=model.info["device"], cache_dir=cache_dir, use_cache=use_cache,
                                          progress=progress, store=model.store)
    return Statistics(calibration=c, windows=windows, stats=computed.stats, info=computed.info)


def as_plan(plan: str | Path | PruningPlan, *, sparsity: float | None = None, pattern: str | None = None,
            **fields) -> PruningPlan:
    """A plan from a named method (``METHODS``; ``sparsity`` default 0.5 unstructured, or ``pattern``
    N:M), a plan file, or a plan; ``fields`` (mode, update, refine, permute) override a plan's own."""
    if sparsity is not None and pattern is not None:
        raise UserError("give either a sparsity (unstructured) or an N:M pattern, not both")
    fields = {k: v for k, v in fields.items() if v is not None}
    if isinstance(plan, str) and (plan in METHODS or not _looks_like_file(plan)):  # a named method (unknown: refused)
        fields.setdefault("mode", "one-shot")
        return plan_for_method(plan, sparsity=sparsity if sparsity is not None or pattern else 0.5,
                               pattern=pattern or "unstructured", **fields)
    if isinstance(plan, (str, Path)):
        source = f"plan {plan}"
        plan = PruningPlan.load(plan)
    else:
        source = "plan"
    if sparsity is not None:
        fields.update(sparsity=sparsity, pattern="unstructured", layer_sparsity={})
    if pattern is not None:
        fields.update(pattern=pattern, sparsity=None, layer_sparsity={})
    if not fields:
        return plan
    return plan.with_fields(source=f"{source} with overrides", **fields)


def prune(model: str | LoadedModel, plan: str | Path | PruningPlan, *, sparsity: float | None = None,
          pattern: str | None = None, mode: str | None = None, update: str | None = None, refine: str | None = None,
          permute: str | None = None, transfer: str | None = None, calibration: Calibration | None = None,
          heldout: Heldout | list[Heldout] | None = None, statistics: Statistics | None = None, kl: bool = False, data_dir=None, bos: bool | None = None,
          batch_size: int = 4, use_cache: bool = True, cache_dir=None, dtype: str = "float32", device: str = "auto",
          offload: str = "none", offload_folder=None, memory_check: bool = True, out=None,
          record: dict | None = None, say: Callable[[str], None] = log.info, progress: bool = True) -> PruneResult:
    """Prune ``model`` with ``plan`` (see :func:`as_plan`), evaluate it on ``heldout`` (dense and pruned
    perplexity, and KL to the dense model with ``kl``) and, with ``out``, export it with plan.yaml
    and metrics.json. ``calibration`` default: the one the plan records (a search's plan files do),
    else the papers' (``Calibration()``); ``transfer`` (``metric`` | ``depth``) carries a plan made
    for another model over (pruning/transfer.py). ``statistics`` (``calibrate``'s, of this model):
    a one-shot prune reads them instead of capturing, a sequential one re-runs their windows. A model given by name is loaded after the memory
    check (``memory_check=False`` skips it) and every source is opened first, so a bad input fails
    before the load. ``say`` gets the lines a user reads as the job goes (default: the log);
    ``record`` is added to metrics.json (the CLI's command and flags)."""
    if transfer and isinstance(plan, str) and plan in METHODS:
        raise UserError("--transfer carries a plan file over to another model: give it with --plan FILE")
    plan = as_plan(plan, sparsity=sparsity, pattern=pattern, mode=mode, update=update, refine=refine, permute=permute)
    calibration = calibration or (statistics.calibration if statistics is not None else
                                  Calibration(**plan.calibration.model_dump(exclude={"data_dir"}))
                                  if plan.calibration is not None else Calibration())
    heldouts = [] if heldout is None else [heldout] if isinstance(heldout, Heldout) else list(heldout)
    if isinstance(model, str):
        spec = model
        check_model_spec(spec)
        _memory_check(spec, plan, calibration, batch_size=batch_size, dtype=dtype, device=device, cache_dir=cache_dir,
                      offload=offload, offload_folder=offload_folder, enforce=memory_check, say=say)
        _check_sources(plan, None if statistics is not None else calibration, heldouts, data_dir)
        model = load_model(spec, dtype=dtype, device=device, cache_dir=cache_dir, offload=offload,
                           offload_folder=offload_folder)
    else:
        spec = model.info.get("spec", "model")
        _check_sources(plan, None if statistics is not None else calibration, heldouts, data_dir)
    net, tok, dev, store = model.model, model.tokenizer, model.info["device"], model.store
    bos = needs_bos(net) if bos is None else bos
    say(f"model: {spec} ({model.info.get('n_params', 0) / 1e6:.1f}M parameters, {model.info['model_type']}, {dev})")
    plan = fit_plan(plan, net, spec, transfer=transfer, say=say)  # refused here, before any calibration
    say(f"plan:  {plan.describe()}")

    calib, stats = None, None
    if statistics is not None:
        calib = statistics.windows
        stats = statistics.stats if plan.mode == "one-shot" else None
    elif needs_statistics(plan):
        c = calibration
        calib = calibration_windows(c.source, tok, nsamples=c.nsamples, seqlen=c.seqlen, seed=c.seed, data_dir=data_dir,
                                    split=c.split, text_field=c.text_field, bos=bos)
    evals = {h.source: evaluation_windows(h.source, tok, seqlen=h.seqlen, max_windows=h.windows, data_dir=data_dir, bos=bos)
             for h in heldouts}
    dense_ppl = {s: perplexity(net, w.input_ids, device=dev, desc=f"dense ppl {s}", store=store) for s, w in evals.items()}
    reference = DenseReference(net, {s: w.input_ids for s, w in evals.items()}, device=dev, store=store) \
        if kl and evals else None
    result = prune_model(net, plan, None if calib is None or stats is not None else calib.input_ids, stats=stats,
                         batch_size=batch_size, device=dev, progress=progress,
                         cache_dir=cache_dir, use_cache=use_cache, windows_info=None if calib is None else calib.info,
                         store=store)
    pruned_ppl = {s: perplexity(net, w.input_ids, device=dev, desc=f"pruned ppl {s}", store=store) for s, w in evals.items()}
    kls = reference.kl() if reference is not None else {}
    evaluation = {s: {"data": evals[s].info, "dense": dense_ppl[s], "pruned": pruned_ppl[s], **({"kl": kls[s]} if s in kls else {})}
                  for s in evals}
    metrics = {
        "model": model.info,
        "plan": plan.to_dict(),
        "mode": plan.mode,
        "calibration": None if calib is None else calib.info,
        "statistics": result.info.get("calibration"),
        "prune_seconds": result.info["seconds"],
        "realised_sparsity": round(result.realised_sparsity, 6),
        "evaluation": evaluation,
        "layers": result.layers,
        **({"pattern_note": permuted_note(plan)} if result.permutations else {}),
        "environment": environment(dev),
        **(record or {}),
    }
    if out is not None:
        out = Path(out)
        export_pruned(net, tok, out, plan, metrics, permutations=result.permutations, store=store)
    return PruneResult(model=model, plan=plan, realised_sparsity=result.realised_sparsity, seconds=result.info["seconds"],
                       layers=result.layers, evaluation=evaluation, metrics=metrics, permutations=result.permutations,
                       out=out)


def fit_plan(plan: PruningPlan, net, name: str, *, transfer: str | None = None,
             say: Callable[[str], None] = log.info) -> PruningPlan:
    """The plan checked against the model's prunable layers (or carried over with ``transfer``), with
    the record of this model that the exported plan.yaml keeps (pruning/transfer.py)."""
    shapes = prunable_shapes(net)
    if transfer:
        plan, line = transfer_plan(plan, shapes, transfer, name)
        say(line)
        return plan
    for note in check_plan(plan, shapes, name):
        say(note)
    return plan.with_fields(model=model_record(name, shapes).model_dump())


def evaluate(model: LoadedModel, heldout: Heldout | None = None, *, data_dir=None, bos: bool | None = None,
             batch_size: int = 1) -> Perplexity:
    """Perplexity of ``model`` (as it is now) on ``heldout`` (default: WikiText-2 test, the papers' protocol)."""
    h = heldout or Heldout()
    check_source(h.source, "evaluation", data_dir=data_dir)
    net = model.model
    windows = evaluation_windows(h.source, model.tokenizer, seqlen=h.seqlen, max_windows=h.windows, data_dir=data_dir,
                                 bos=needs_bos(net) if bos is None else bos)
    r = perplexity(net, windows.input_ids, batch_size=batch_size, device=model.info["device"], store=model.store,
                   desc=f"ppl {h.source}")
    return Perplexity(ppl=r["ppl"], nll=r["nll"], n_windows=r["n_windows"], n_tokens=r["n_tokens"], seconds=r["seconds"],
                      data=windows.info)


def search(config, *, out=None, trials: int | None = None, timeout: float | None = None, final: bool = True,
           progress: bool = True, **overrides) -> SearchResult:
    """Run (or resume) the study of ``config`` (a YAML path, a mapping or a ``StudyConfig``) into ``out``
    (default ``runs/<config name>``): its phases in order, then the report. ``overrides`` are dotted
    config fields (``**{"searcher.seed": 1}``) or top-level ones (``model=...``)."""
    # deferred: the search stack (Optuna, the searchers) loads only for a search
    from .search.run import run_search
    from .search.study.config import StudyConfig, load_config

    overrides = dict(overrides)
    if trials is not None:
        overrides["budget.trials"] = trials
    if timeout is not None:
        overrides["budget.timeout"] = timeout
    if isinstance(config, StudyConfig) and not overrides:
        name = config.study_name or "study"
    elif isinstance(config, (StudyConfig, dict)):  # a mapping: its fields, then the dotted overrides
        data = config.model_dump(mode="json") if isinstance(config, StudyConfig) else copy.deepcopy(config)
        name = data.get("study_name") or "study"
        config = load_config(None, {**data, **overrides})
    else:
        name = Path(config).stem
        config = load_config(Path(config), overrides)
    folder = Path(out) if out is not None else Path("runs") / name
    report = run_search(config, folder, progress=progress, final=final)
    best = folder / "best.yaml"
    final_json = folder / "final.json"
    return SearchResult(out=folder, report=report, best_plan=best if best.exists() else None,
                        final=json.loads(final_json.read_text()) if final_json.exists() else None,
                        meta=json.loads((folder / "meta.json").read_text()) if (folder / "meta.json").exists() else {})


def permuted_note(plan: PruningPlan) -> str:
    from .export import PERMUTATIONS_FILE  # deferred: only a permuted N:M plan needs the name

    return (f"the mask is {plan.pattern} in the permuted input-channel order saved in {PERMUTATIONS_FILE} "
            f"(per layer); in the original channel order it is not {plan.pattern}")


def _memory_check(spec: str, plan: PruningPlan, calibration: Calibration, *, batch_size: int, dtype: str, device: str,
                  cache_dir, offload: str, offload_folder, enforce: bool, say: Callable[[str], None]) -> None:
    """The memory model's figures for pruning ``spec`` with ``plan``; refused when it does not fit and ``enforce``."""
    import torch  # deferred: only for the element size of the dtype

    dev = str(resolve_device(device))
    job = Job("prune", offload=offload, device=dev, dtype_bytes=torch.empty((), dtype=resolve_dtype(dtype)).element_size(),
              n_windows=calibration.nsamples, seqlen=calibration.seqlen, batch_size=batch_size, with_gram=plan.needs_gram,
              update=plan.update)
    report = memory_report(spec, job, cache_dir=cache_dir)
    if report is None:
        say("memory: the model's config cannot be read before loading; no memory check")
        return
    say(f"memory (offload: {offload}, model estimate): {report.estimate.summary(dev)}")
    if enforce:
        report.check(dev, what=f"prune of {spec}", cache_dir=cache_dir, offload_folder=offload_folder)


def _looks_like_file(text: str) -> bool:
    return Path(text).suffix.lower() in (".yaml", ".yml") or "/" in text or Path(text).exists()


def _check_sources(plan: PruningPlan, calibration: Calibration | None, heldouts: list[Heldout], data_dir) -> None:
    """Open the texts before the model loads, so a bad source fails at once (``calibration`` None:
    the statistics are given)."""
    if calibration is not None and needs_statistics(plan):
        check_source(calibration.source, "calibration", data_dir=data_dir, split=calibration.split,
                     text_field=calibration.text_field)
    for h in heldouts:
        check_source(h.source, "evaluation", data_dir=data_dir)
