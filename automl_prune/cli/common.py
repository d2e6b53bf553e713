"""Options shared by the subcommands, and the steps they share (model, data, bos)."""

from __future__ import annotations

import argparse
import os

from ..errors import UserError

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
    """Fill unset sizes from the papers' protocol (the settings' defaults, data/settings.py) or, with
    --quick, the CPU-friendly ones."""
    from ..data.settings import QUICK, Calibration, Heldout  # deferred: as in _settings

    c, h = Calibration(), Heldout()
    papers = dict(nsamples=c.nsamples, seqlen=c.seqlen, eval_seqlen=h.seqlen, eval_windows=h.windows)
    defaults = dict(QUICK if getattr(args, "quick", False) else papers, calib=c.source, seed=c.seed)
    for name, value in defaults.items():
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("nsamples", "seqlen", "eval_seqlen", "eval_windows", "batch_size"):
        v = getattr(args, name, None)
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")


def bos_choice(args: argparse.Namespace) -> bool | None:
    """--bos: True (always), False (never) or None (auto: the model says)."""
    return {"always": True, "never": False}.get(args.bos)


def use_bos(args: argparse.Namespace, model) -> bool:
    from ..models.adapters import needs_bos  # deferred: torch loads only when a subcommand runs

    choice = bos_choice(args)
    return needs_bos(model) if choice is None else choice


def calibration_settings(args: argparse.Namespace):
    """The calibration flags (after ``resolve_quick``) as the shared settings model (data/settings.py)."""
    return _settings("Calibration", dict(source=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                         split=args.calib_split, text_field=args.text_field),
                     dict(source="--calib", nsamples="--nsamples", seqlen="--seqlen", seed="--seed"))


def heldout_settings(args: argparse.Namespace, source: str):
    """The evaluation flags for one held-out ``source`` as the shared settings model."""
    return _settings("Heldout", dict(source=source, seqlen=args.eval_seqlen, windows=args.eval_windows),
                     dict(source="--eval", seqlen="--eval-seqlen", windows="--eval-windows"))


def _settings(kind: str, values: dict, flags: dict):
    from pydantic import ValidationError  # deferred: as the settings themselves

    from ..data import settings  # deferred: loads pydantic only when a subcommand runs

    try:
        return getattr(settings, kind)(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err.get("loc") else ""
        raise UserError(f"{flags.get(field, field)}: {err['msg'].lower()} (got {err.get('input')!r})") from None


def eval_sources(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    if not names:
        raise UserError("--eval needs at least one source name (e.g. wikitext2)")
    return names
