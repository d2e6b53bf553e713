"""Options shared by the subcommands, and the steps they share (model, data, bos)."""

from __future__ import annotations

import argparse
import os

from ..errors import UserError

QUICK = dict(nsamples=32, seqlen=512, eval_seqlen=1024, eval_windows=16)


def add_model_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, metavar="M",
                   help="HF hub id, local HF folder, .gguf file, or offline alias (smollm2-135m, gemma3-270m)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="weights dtype (default float32)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present; default)")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="cache for GGUF conversions and statistics (default $AUTOML_PRUNE_CACHE or ~/.cache/automl-prune)")


def add_offload_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("memory")
    g.add_argument("--offload", default="none", choices=["none", "cpu", "disk"],
                   help="where the decoder blocks' weights live: on the device (none, default), in host memory (cpu) or "
                        "in memory-mapped safetensors files (disk); offloaded, one block at a time is on the device")
    g.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="where --offload disk writes the blocks it changes (default: a temporary folder)")
    g.add_argument("--no-memory-check", action="store_true",
                   help="do not refuse a job the memory model says will not fit")


def memory_check(args: argparse.Namespace, job_kind: str, **job) -> None:
    """Print the memory model's figures for the job and refuse it (UserError) when it does not fit."""
    # deferred: torch and the model stack load only when a subcommand runs
    from ..models.loading import resolve_device, resolve_dtype
    from ..models.memory_model import Job, ModelShape, available, check_fits, estimate, model_config

    config = model_config(args.model, args.cache_dir)
    if config is None:
        print("memory: the model's config cannot be read before loading; no memory check")
        return
    device = str(resolve_device(args.device))
    dtype_bytes = torch_itemsize(resolve_dtype(args.dtype))
    est = estimate(ModelShape.from_config(config), Job(job_kind, offload=args.offload, device=device, dtype_bytes=dtype_bytes,
                                                       **job))
    print(f"memory (offload: {args.offload}, model estimate): {est.summary(device)}")
    if not args.no_memory_check:
        from ..models.gguf_cache import default_cache_dir  # deferred: as above

        check_fits(est, available(device, cache_dir=default_cache_dir(args.cache_dir), offload_folder=args.offload_folder),
                   what=f"{job_kind} of {args.model}")


def torch_itemsize(dtype) -> int:
    import torch

    return torch.empty((), dtype=dtype).element_size()


def add_data_dir_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=os.environ.get("AUTOML_PRUNE_DATA_DIR"), metavar="DIR",
                   help="offline data folder laid out like shared/data (default $AUTOML_PRUNE_DATA_DIR); "
                        "without it, c4 and wikitext2 come from the Hugging Face hub")
    p.add_argument("--bos", default="auto", choices=["auto", "always", "never"],
                   help="BOS token at the start of every window (auto: for models that need one, e.g. Gemma)")


def add_calibration_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("calibration (defaults follow the papers: c4, 128 x 2048, seed 0)")
    g.add_argument("--calib", default=None, metavar="NAME",
                   help="c4, wikitext2, wiki-offline, a local .txt/.jsonl/.json file or folder, or an HF dataset id "
                        "(default c4; with --plan, the calibration the plan records)")
    g.add_argument("--nsamples", type=int, default=None, metavar="N", help="calibration windows (default 128; 32 with --quick)")
    g.add_argument("--seqlen", type=int, default=None, metavar="L", help="tokens per window (default 2048; 512 with --quick)")
    g.add_argument("--seed", type=int, default=None, metavar="K", help="sampling seed (default 0)")
    g.add_argument("--calib-split", default=None, metavar="SPLIT", help="split of an HF dataset id")
    g.add_argument("--text-field", default=None, metavar="FIELD", help="text field of a .jsonl/.json file or HF dataset")
    g.add_argument("--batch-size", type=int, default=4, metavar="B", help="windows per forward during calibration (default 4)")
    g.add_argument("--quick", action="store_true",
                   help="CPU-friendly settings: 32 x 512 calibration, evaluation on 16 windows of 1024 tokens")


def add_eval_options(p: argparse.ArgumentParser, *, flag: str = "--eval", default: str | None = "wikitext2") -> None:
    """``default=None``: the command fills the source itself (prune: the plan's held-out text, else wikitext2)."""
    g = p.add_argument_group("evaluation")
    g.add_argument(flag, dest="eval", default=default, metavar="NAMES",
                   help="comma-separated held-out sources: wikitext2, c4, wiki-offline, local files (default "
                        + (default or "wikitext2; with --plan, the held-out text the plan records") + ")")
    g.add_argument("--eval-seqlen", type=int, default=None, metavar="L", help="evaluation window length (default 2048; 1024 with --quick)")
    g.add_argument("--eval-windows", type=int, default=None, metavar="N", help="evaluate only the first N windows (default all; 16 with --quick)")


def resolve_quick(args: argparse.Namespace) -> None:
    """Fill unset sizes from the paper defaults or, with --quick, the CPU-friendly ones."""
    quick = getattr(args, "quick", False)
    defaults = dict(QUICK if quick else dict(nsamples=128, seqlen=2048, eval_seqlen=2048, eval_windows=None), calib="c4", seed=0)
    for name, value in defaults.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("nsamples", "seqlen", "eval_seqlen", "eval_windows", "batch_size"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")


def use_bos(args: argparse.Namespace, model) -> bool:
    from ..models.adapters import needs_bos  # deferred: torch loads only when a subcommand runs

    return {"always": True, "never": False}.get(args.bos, None) if args.bos != "auto" else needs_bos(model)


def eval_sources(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--eval needs at least one source name (e.g. wikitext2)")
    return names
