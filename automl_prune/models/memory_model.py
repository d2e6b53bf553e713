"""How much memory a job needs, from the model's config alone (before anything loads): device peak,
host peak and disk, per job (statistics capture, pruning, one search candidate) and offload mode.

The model is counted exactly (a skeleton built from the config without weights); what the work
adds is a sum of named parts, each one a formula of the shapes and the settings:

* ``runtime``: Python, torch and transformers themselves (host; measured: about 0.5 GiB);
* ``weights``: the non-block weights (embeddings, final norm, LM head) and the decoder blocks:
  all of them (``none``), in host memory with one block on the device (``cpu``), or one block
  (``disk``);
* ``hidden``: every calibration window's hidden states, a block's inputs and outputs at once;
* ``block work``: one batch through one block (its MLP and attention activations);
* ``statistics``: per block, per distinct input of its linear layers, four float64 vectors and,
  with a Gram matrix (SparseGPT, ADMM, searches), a float32 (in x in) matrix; kept on the host,
  all blocks' (``none``) or one block's at a time when offloaded; a search candidate also holds
  its Gram matrices on the device (``grams on device``: all of them, or one block's);
* ``update``: SparseGPT / ADMM on the widest layer (Hessian, its inverse, float32 weights);
* ``scores``: a metric's scores and the selection on the largest layer;
* ``dense copy``, ``score cache``: a search candidate's (the dense prunable weights kept aside,
  cached scores up to their 1 GiB bound);
* ``probe``: a search candidate's forward pass (the probe windows' states, logits chunks).

``check_fits`` compares the figures with what the job is given (host memory available, the
device's memory times ``gpus_per_trial``, free disk) and refuses with the figures when it does not
fit. benchmarks/memory_scaling.py sets the model against measured peaks.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..host_memory import SLACK_BYTES
from ..pruning.score_cache import SCORE_CACHE_BYTES
from . import gguf_cache
from .adapters import decoder_blocks, prunable_linears
from .aliases import get_alias, is_alias

GIB = 2**30
RUNTIME_BYTES = int(0.5 * GIB)  # Python + torch + transformers, measured on this project's stack
#: the phases of a search worker, as automl_prune/phase_log.py measures them (meta.json "phases")
SEARCH_PHASES = ("load model", "statistics", "profile", "objectives", "search", "selection", "final comparison")


@dataclass
class ModelShape:
    """What the memory model needs of a model: parameter counts and layer shapes."""

    n_blocks: int
    hidden: int
    vocab: int
    rest_params: int  # outside the decoder blocks (tied weights counted once)
    block_params: int  # the largest block
    linears: list[tuple[int, int]]  # (out, in) of one block's prunable layers
    inputs: list[int]  # in_features of one block's distinct inputs (layers that read one tensor share one)
    intermediate: int
    heads: int

    @property
    def prunable_per_block(self) -> int:
        return sum(o * i for o, i in self.linears)

    @classmethod
    def from_model(cls, model: nn.Module) -> "ModelShape":
        blocks = decoder_blocks(model)
        in_blocks = {id(p) for b in blocks for p in b.parameters()}
        rest = sum(p.numel() for p in model.parameters() if id(p) not in in_blocks)
        block = blocks[0]
        linears = prunable_linears(block)
        inputs: dict[tuple[str, int], int] = {}
        for name, lin in linears.items():  # q/k/v (gate/up) sit side by side and read one tensor
            inputs.setdefault((name.rpartition(".")[0], lin.in_features, _reads_output_of(name)), lin.in_features)
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        widest = max(lin.in_features for lin in linears.values())
        return cls(n_blocks=len(blocks), hidden=int(config.hidden_size), vocab=int(config.vocab_size), rest_params=rest,
                   block_params=max(sum(p.numel() for p in b.parameters()) for b in blocks),
                   linears=[(lin.out_features, lin.in_features) for lin in linears.values()], inputs=list(inputs.values()),
                   intermediate=int(getattr(config, "intermediate_size", None) or getattr(config, "ffn_dim", None) or widest),
                   heads=int(getattr(config, "num_attention_heads", 1)))

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        return cls.from_model(model)


def _reads_output_of(name: str) -> bool:
    """Output projections (o_proj, down_proj, dense, fc2, out_proj) read their own input."""
    leaf = name.rpartition(".")[2]
    return leaf in ("o_proj", "down_proj", "dense", "fc2", "out_proj", "dense_4h_to_h", "proj")


@dataclass
class Job:
    """What is done: ``load`` (the model, dequantized first when ``dequantize_bytes``, the size of a
    GGUF file whose float copy is not cached yet), ``capture`` (statistics), ``prune`` (with
    ``update`` none / sparsegpt / admm) or ``candidate`` (one search candidate), with its windows and
    offload. ``selection_tokens``: the largest selection stage's tokens (search_phases)."""

    kind: str
    offload: str = "none"
    device: str = "cpu"
    dtype_bytes: int = 4
    n_windows: int = 128
    seqlen: int = 2048
    batch_size: int = 4
    with_gram: bool = False
    update: str = "none"
    probe_tokens: int = 0
    probe_seqlen: int = 512
    fisher_windows: int = 0  # layer_recon's Fisher weighting: probe windows it backpropagates
    heldout_tokens: int = 0  # the final comparison's held-out tokens (their LM-head inputs are kept)
    dequantize_bytes: int = 0
    selection_tokens: int = 0


@dataclass
class MemoryEstimate:
    device_peak: int
    host_peak: int
    disk: int
    parts: dict[str, int] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # part -> "device" | "host"
    disk_parts: dict[str, int] = field(default_factory=dict)  # "statistics cache" | "offload folder" -> bytes

    def lines(self) -> list[str]:
        return ([f"  {name:<16} {b / GIB:8.2f} GiB  ({self.where[name]})" for name, b in self.parts.items() if b]
                + [f"  {name:<16} {b / GIB:8.2f} GiB  (disk)" for name, b in self.disk_parts.items() if b])

    def summary(self, device: str) -> str:
        dev = "" if device == "cpu" else f"device peak {self.device_peak / GIB:.2f} GiB, "
        return f"{dev}host peak {self.host_peak / GIB:.2f} GiB, disk {self.disk / GIB:.2f} GiB"


def estimate(shape: ModelShape, job: Job) -> MemoryEstimate:
    """The peaks of ``job`` on a model of ``shape`` (see the module's docstring). Where each part
    lives follows the code: statistics are kept on the host (capture moves each block's there) and
    brought to the device where they are used; on a CPU device every part is host memory."""
    s, f32 = job.dtype_bytes, 4
    dev = "device" if job.device != "cpu" else "host"
    offloaded = job.offload != "none"
    n = shape.n_blocks
    blocks_bytes, block_bytes = n * shape.block_params * s, shape.block_params * s
    tokens = job.n_windows * job.seqlen
    batch = min(job.batch_size, job.n_windows)
    gram = job.with_gram or job.update != "none" or job.kind == "candidate"
    stats_block = sum(4 * i * 8 + (i * i * f32 if gram else 0) for i in shape.inputs)
    grams_block = sum(i * i * f32 for i in shape.inputs)
    widest_in = max(i for _, i in shape.linears)
    largest = max(o * i for o, i in shape.linears)
    prunable = n * shape.prunable_per_block
    parts: dict[str, tuple[int, str]] = {
        "runtime": (RUNTIME_BYTES, "host"),
        "rest weights": (shape.rest_params * s, dev),
    }
    if not offloaded:
        parts["blocks"] = (blocks_bytes, dev)
    else:
        parts["block"] = (2 * block_bytes, dev)  # the block worked on and the copy read in
        parts["host blocks" if job.offload == "cpu" else "block read"] = (blocks_bytes if job.offload == "cpu" else block_bytes,
                                                                          "host")
    if job.kind == "load":  # the GGUF file read and one tensor dequantized to float32 at a time beside the model
        parts["dequantization"] = (job.dequantize_bytes + (shape.vocab * shape.hidden * f32 if job.dequantize_bytes else 0),
                                   "host")
        return _estimate(parts, {"statistics cache": 0, "offload folder": 0})
    parts["hidden"] = (2 * tokens * shape.hidden * s, "host" if offloaded else dev)  # offloaded: kept on the host
    parts["block work"] = (batch * job.seqlen * (3 * shape.intermediate + 8 * shape.hidden) * f32
                           + batch * shape.heads * job.seqlen ** 2 * f32, dev)  # attention scores: an upper bound (eager)
    # offloaded: one block's, its file's bytes and the parsed tensors side by side while it is read
    parts["statistics"] = (stats_block * (2 if offloaded else n), "host")
    if job.kind == "prune":
        if job.update != "none":
            parts["update"] = ((3 * widest_in * widest_in + 3 * largest) * f32, dev)
        else:
            parts["scores"] = (largest * (f32 + 8), dev)
    if job.kind == "candidate":
        # on a CPU device the statistics' float32 Gram matrices are used where they lie: no copy
        parts["grams on device"] = (0 if job.device == "cpu" else grams_block * (1 if offloaded else n), dev)
        parts["dense copy"] = ((shape.prunable_per_block if offloaded else prunable) * s, dev)
        # filled to its bound: a search meets many metrics, each one's scores (4 bytes a weight) or ranks (2)
        parts["score cache"] = (0 if job.offload == "disk" else min(SCORE_CACHE_BYTES, 3 * prunable * f32), dev)
        # the dense and pruned LM-head inputs and a pass's hidden states, and a chunk of logits three times over
        parts["probe"] = (3 * job.probe_tokens * shape.hidden * f32 + 3 * 512 * shape.vocab * f32, dev)
        parts["mask bits"] = (prunable // 8, "host")  # the candidate's masks, packed (its mask hash)
        parts["freed, kept"] = (SLACK_BYTES, "host")  # what glibc may hold freed before a trim (host_memory.py)
        parts["held-out"] = (job.heldout_tokens * shape.hidden * f32, dev)  # LM-head inputs of the final comparison
        if job.fisher_windows:
            window = job.probe_seqlen * shape.hidden * f32
            if offloaded:  # every block's inputs kept, then a block recomputed with gradients
                parts["fisher"] = (n * job.fisher_windows * window, "host")
                parts["fisher pass"] = (job.fisher_windows * window * 2 + job.probe_seqlen * (3 * shape.intermediate
                                        + 8 * shape.hidden) * f32, dev)
            else:  # one window's backward through the whole model
                parts["fisher pass"] = (n * job.probe_seqlen * (3 * shape.intermediate + 8 * shape.hidden) * f32
                                        + job.probe_seqlen * shape.vocab * f32 * 2, dev)
    disk_parts = {"statistics cache": stats_block * n,  # one entry, a file per block
                  "offload folder": blocks_bytes if job.offload == "disk" and job.kind == "prune" else 0}  # pruned blocks
    return _estimate(parts, disk_parts)


def _estimate(parts: dict[str, tuple[int, str]], disk_parts: dict[str, int]) -> MemoryEstimate:
    device = sum(b for b, w in parts.values() if w == "device")
    host = sum(b for b, w in parts.values() if w == "host")
    return MemoryEstimate(device, host, sum(disk_parts.values()), {k: b for k, (b, _) in parts.items()},
                          {k: w for k, (_, w) in parts.items()}, disk_parts)


def search_phases(shape: ModelShape, job: Job) -> dict[str, MemoryEstimate]:
    """The peak of each phase of a search worker (``SEARCH_PHASES``; ``job`` is its candidate job),
    counting what the earlier phases left in place: the model loaded (and dequantized, on a cold
    GGUF cache), the statistics captured, the objectives prepared (the dense copy, their references
    and the Fisher pass, no candidate yet), then candidates (search; the Fisher pass is over by
    then), the same on the selection's largest stage of fresh tokens, and the final comparison's
    (with the held-out text)."""
    def without(est: MemoryEstimate, parts: set[str]) -> MemoryEstimate:
        return _estimate({k: (b, est.where[k]) for k, b in est.parts.items() if k not in parts}, est.disk_parts)

    own = {"score cache", "mask bits", "grams on device", "held-out", "freed, kept"}  # a candidate's, not yet there
    prepare = {"fisher", "fisher pass"}  # layer_recon's Fisher weights: computed once, while the objectives are prepared
    candidate = estimate(shape, replace(job, kind="candidate"))
    selection = estimate(shape, replace(job, kind="candidate", probe_tokens=max(job.probe_tokens, job.selection_tokens)))
    return {"load model": estimate(shape, replace(job, kind="load")),
            "statistics": estimate(shape, replace(job, kind="capture", with_gram=True)),
            "profile": without(candidate, own | prepare | {"probe"}),  # the context (its dense copy) is there
            "objectives": without(candidate, own), "search": without(candidate, prepare),
            "selection": without(selection, prepare), "final comparison": without(candidate, prepare)}


def peak_phase(phases: dict[str, MemoryEstimate]) -> tuple[str, MemoryEstimate]:
    """The phase whose combined device and host peak is the largest (what a memory check must fit)."""
    return max(phases.items(), key=lambda kv: (kv[1].device_peak + kv[1].host_peak, kv[1].disk))


def _located(spec: str, cache_dir=None) -> tuple[Path | None, Path]:
    """(the cached float copy of an alias's GGUF file, if complete; the spec's path: an alias's GGUF file)."""
    path = Path(spec).expanduser()
    if is_alias(spec) and not path.exists():
        alias = get_alias(spec)
        root = gguf_cache.default_cache_dir(cache_dir)
        if alias.sha256 and gguf_cache.is_complete(gguf_cache.cache_folder(root, alias.sha256), alias.sha256):
            return gguf_cache.cache_folder(root, alias.sha256), path
        path = alias.locate(root).path
    return None, path


def model_config(spec: str, cache_dir=None):
    """The config of a model spec, read without its weights; None when it cannot be had cheaply
    (a hub id without a reachable hub)."""
    from transformers import AutoConfig

    try:
        cached, path = _located(spec, cache_dir)
        if cached is not None:
            return AutoConfig.from_pretrained(str(cached))
        if path.is_file():
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
        return AutoConfig.from_pretrained(str(path) if path.is_dir() else spec)
    except (OSError, ValueError, KeyError):
        return None


def gguf_to_dequantize(spec: str, cache_dir=None) -> int:
    """Bytes of the GGUF file a load of ``spec`` dequantizes first (its float copy is not cached
    yet: the cold first run), else 0. A GGUF path other than an alias's counts as cold: its cache
    is found by hashing the whole file, too dear for an estimate."""
    try:
        cached, path = _located(spec, cache_dir)
        return path.stat().st_size if cached is None and path.is_file() and path.suffix == ".gguf" else 0
    except (OSError, ValueError, KeyError):
        return 0


def _existing(folder: str | Path) -> Path:
    p = Path(folder).expanduser()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def available(device: str, *, gpus: float = 1.0, cache_dir: str | Path | None = None,
              offload_folder: str | Path | None = None) -> dict:
    """What a job can use: host memory available now, the device's memory times ``gpus`` (CUDA), and
    the free disk where the statistics cache and the offload folder (default: the system's temporary
    folder) lie (``disk``: part -> (filesystem, free bytes))."""
    import psutil

    out: dict = {"host": int(psutil.virtual_memory().available), "device": None, "disk": {}}
    if device != "cpu" and torch.cuda.is_available():
        out["device"] = int(torch.cuda.get_device_properties(torch.device(device)).total_memory * gpus)
    for part, folder in (("statistics cache", cache_dir), ("offload folder", offload_folder or tempfile.gettempdir())):
        if folder is not None:
            p = _existing(folder)
            out["disk"][part] = (p.stat().st_dev, int(shutil.disk_usage(p).free))
    return out


def check_fits(est: MemoryEstimate, have: dict[str, int | None], *, what: str,
               offload_hint: str = "--offload disk, or cpu with a GPU", skip_hint: str = "pass --no-memory-check") -> None:
    """UserError with the figures when ``est`` exceeds what is available."""
    short = []
    device_need = est.device_peak if have.get("device") is not None else 0
    host_need = est.host_peak + (0 if have.get("device") is not None else est.device_peak)
    for name, need, got in (("device", device_need, have.get("device")), ("host", host_need, have.get("host"))):
        if got is not None and need > got:
            short.append(f"{name} needs {need / GIB:.2f} GiB, {got / GIB:.2f} GiB available")
    by_fs: dict[int, tuple[int, int, list[str]]] = {}  # parts on one filesystem share its free space
    for part, (fs, free) in (have.get("disk") or {}).items():
        need, _, names = by_fs.get(fs, (0, free, []))
        by_fs[fs] = (need + est.disk_parts.get(part, 0), free, names + [part])
    for need, free, names in by_fs.values():
        if need > free:
            short.append(f"disk ({' and '.join(names)}) needs {need / GIB:.2f} GiB, {free / GIB:.2f} GiB free")
    if short:
        raise UserError(f"{what} does not fit: " + "; ".join(short) + ". The estimate by part:\n" + "\n".join(est.lines())
                        + f"\nOffload the blocks ({offload_hint}), use fewer or shorter calibration windows, "
                          f"or {skip_hint} if you know better.")


@dataclass
class MemoryReport:
    """The memory model's figures for one job on one model: the estimate a check must fit (with
    ``by_phase``, the largest phase of a search worker, and every phase's)."""

    estimate: MemoryEstimate
    peak_phase: str | None = None
    phases: dict[str, MemoryEstimate] | None = None

    def check(self, device: str, *, what: str, cache_dir=None, offload_folder=None, gpus: float = 1.0, sharers: int = 1,
              offload_hint: str = "--offload disk, or cpu with a GPU", skip_hint: str = "pass --no-memory-check") -> None:
        """Refuse (UserError with the figures) when the estimate exceeds what is available;
        ``sharers`` jobs of this kind share the host's memory (local Ray workers)."""
        have = available(device, gpus=gpus, cache_dir=gguf_cache.default_cache_dir(cache_dir), offload_folder=offload_folder)
        if sharers > 1 and have["host"] is not None:
            have["host"] //= sharers
        check_fits(self.estimate, have, what=what, offload_hint=offload_hint, skip_hint=skip_hint)

    def record(self, offload: str) -> dict:
        """The figures as a run records them (meta.json ``memory_model``)."""
        gib = lambda b: round(b / GIB, 2)  # noqa: E731
        est = self.estimate
        out = dict(device_peak_gib=gib(est.device_peak), host_peak_gib=gib(est.host_peak), disk_gib=gib(est.disk),
                   offload=offload)
        if self.phases is not None:
            out.update(peak_phase=self.peak_phase, phases={name: dict(device_peak_gib=gib(e.device_peak),
                                                                      host_peak_gib=gib(e.host_peak))
                                                           for name, e in self.phases.items()})
        return out


def memory_report(spec: str, job: Job, *, cache_dir=None, by_phase: bool = False) -> MemoryReport | None:
    """The memory model's figures for ``job`` on the model ``spec`` (read without its weights); with
    ``by_phase`` the phases of a search worker (``job`` is its candidate job). None when the model's
    config cannot be read before loading. The one memory check of the prune command and the search."""
    config = model_config(spec, cache_dir)
    if config is None:
        return None
    shape = ModelShape.from_config(config)
    if not by_phase:
        return MemoryReport(estimate(shape, job))
    phases = search_phases(shape, job)
    name, est = peak_phase(phases)  # every phase fits when the largest does (the cold load included)
    return MemoryReport(est, name, phases)
