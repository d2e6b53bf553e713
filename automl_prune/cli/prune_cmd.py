"""`automl-prune prune`: prune a model with a named method or a plan file, evaluate, export."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import get_args

from ..errors import UserError
from ..export import PERMUTATIONS_FILE
from ..pruning.methods import METHODS
from ..pruning.plan import Permute, Refine, TransferKind, Update
from . import common, paths


def register(sub) -> None:
    p = sub.add_parser("prune", help="prune a model with a method or plan, evaluate it and export it",
                       description="Prune a model with a named method or a plan file, evaluate dense vs pruned "
                                   "perplexity, and save the pruned model with plan.yaml and metrics.json.")
    common.add_model_options(p)
    what = p.add_argument_group("what to prune")
    src = what.add_mutually_exclusive_group(required=True)
    src.add_argument("--method", metavar="NAME", help=f"named method: {', '.join(METHODS)}")
    src.add_argument("--plan", metavar="FILE", help="pruning plan YAML (e.g. best.yaml of a search)")
    what.add_argument("--sparsity", type=float, metavar="S", help="unstructured sparsity in [0, 1) (default 0.5)")
    what.add_argument("--pattern", metavar="N:M", help="N:M pattern, N of every M weights kept (e.g. 2:4)")
    what.add_argument("--mode", choices=["one-shot", "sequential"], help="statistics of the dense model, or of the "
                      "already pruned earlier blocks (default one-shot)")
    what.add_argument("--update", choices=get_args(Update), help="weight update after masking (default none)")
    what.add_argument("--refine", choices=get_args(Refine), help="mask refinement before the update (default none)")
    what.add_argument("--permute", choices=get_args(Permute), help="N:M only: choose the mask in a permuted "
                      "input-channel order (RIA); lsa adds linear-sum-assignment refinement (slower)")
    what.add_argument("--transfer", choices=get_args(TransferKind), help="apply a --plan made for another model: metric (its "
                      "method at its global target, uniform allocation) or depth (its per-layer targets mapped by "
                      "relative depth, renormalised to the exact global count); recorded in the exported plan.yaml")
    common.add_calibration_options(p)
    common.add_offload_options(p)
    common.add_data_dir_option(p)
    common.add_eval_options(p, default=None)
    p.add_argument("--no-eval", action="store_true", help="skip the perplexity evaluation")
    p.add_argument("--kl", action="store_true", help="also report KL(dense || pruned) on the evaluation windows")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the statistics cache")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder for the pruned model")
    p.set_defaults(func=run)


def plan_defaults(args: argparse.Namespace, plan) -> list[str]:
    """Fill the calibration and evaluation settings not given on the command line from what the
    plan records (a search's best.yaml does), so the prune computes the statistics the plan was
    scored on. Returns what was taken from the plan, for the log. ``--quick`` counts as given."""
    if args.quick:
        common.resolve_quick(args)
    taken = []
    c, h = plan.calibration, plan.heldout
    if c is not None:
        for arg, value in (("calib", c.source), ("nsamples", c.nsamples), ("seqlen", c.seqlen), ("seed", c.seed),
                           ("calib_split", c.split), ("text_field", c.text_field)):
            if getattr(args, arg) is None and value is not None:
                setattr(args, arg, value)
                taken.append(arg)
        if args.data_dir is None and c.data_dir and Path(c.data_dir).is_dir():
            args.data_dir = c.data_dir
            taken.append("data_dir")
    if h is not None and args.eval is None:
        args.eval = h.source
        taken.append("eval")
        for arg, value in (("eval_seqlen", h.seqlen), ("eval_windows", h.windows)):
            if getattr(args, arg) is None:
                setattr(args, arg, value)
                taken.append(arg)
    return taken


def run(args: argparse.Namespace) -> int:
    # deferred: a subcommand loads the model stack only when it runs (--help and argument errors answer at once)
    from .. import api

    paths.check(args, out=paths.EXPORT)  # every path option, before anything is read
    plan = api.as_plan(args.plan or args.method, sparsity=args.sparsity, pattern=args.pattern, mode=args.mode,
                       update=args.update, refine=args.refine, permute=args.permute)  # a bad plan fails before any load
    if args.transfer and not args.plan:
        raise UserError("--transfer carries a plan file over to another model: give it with --plan FILE")
    from_plan = plan_defaults(args, plan)
    common.resolve_quick(args)
    calibration = common.calibration_settings(args)
    heldout = [] if args.no_eval else [common.heldout_settings(args, s) for s in common.eval_sources(args.eval or "wikitext2")]
    if from_plan:
        print(f"from the plan file: calibration {args.calib} {args.nsamples} x {args.seqlen}, seed {args.seed}"
              + (f", data dir {args.data_dir}" if "data_dir" in from_plan else "")
              + (f"; evaluation {args.eval} seqlen {args.eval_seqlen}" if "eval" in from_plan else "")
              + " (command-line flags override)")
    result = api.prune(args.model, plan, transfer=args.transfer, calibration=calibration, heldout=heldout, kl=args.kl,
                       data_dir=args.data_dir, bos=common.bos_choice(args), batch_size=args.batch_size,
                       use_cache=not args.no_cache, cache_dir=args.cache_dir, dtype=args.dtype, device=args.device,
                       offload=args.offload, offload_folder=args.offload_folder, memory_check=not args.no_memory_check,
                       out=Path(args.out), say=print,
                       record={"command": shlex.join(["automl-prune", *sys.argv[1:]]),
                               "settings": {k: v for k, v in vars(args).items() if k != "func"}})
    _summary(result)
    return 0


def _summary(result) -> None:
    plan, out = result.plan, result.out
    print(f"\npruned {len(result.layers)} linear layers in {result.seconds:.1f} s; realised sparsity "
          f"{result.realised_sparsity:.2%} ({plan.mode})")
    ev = result.evaluation
    if ev:
        kl = any("kl" in e for e in ev.values())
        print(f"{'data':<14}{'windows':>8}{'dense ppl':>12}{'pruned ppl':>12}" + ("{:>12}".format("KL") if kl else ""))
        for s, e in ev.items():
            d, p = e["dense"], e["pruned"]
            extra = f"{e['kl']['kl']:>12.4f}" if "kl" in e else ""
            print(f"{s:<14}{d['n_windows']:>8}{d['ppl']:>12.3f}{p['ppl']:>12.3f}{extra}")
    if result.permutations:
        print(result.metrics["pattern_note"])
    print(f"saved to {out}/ (model, plan.yaml, metrics.json{', ' + PERMUTATIONS_FILE if result.permutations else ''})")
