"""`automl-prune prune`: prune a model with a named method or a plan file, evaluate, export."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import get_args

from ..errors import UserError
from ..export import PERMUTATIONS_FILE
from ..pruning.methods import METHODS, plan_for_method
from ..pruning.plan import Permute, PruningPlan, Refine, TransferKind, Update
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


def build_plan(args: argparse.Namespace) -> PruningPlan:
    if args.sparsity is not None and args.pattern is not None:
        raise UserError("give either --sparsity (unstructured) or --pattern N:M, not both")
    if args.transfer and not args.plan:
        raise UserError("--transfer carries a plan file over to another model: give it with --plan FILE")
    if args.plan:
        plan = PruningPlan.load(args.plan)
        overrides = {k: v for k, v in dict(mode=args.mode, update=args.update, refine=args.refine,
                                           permute=args.permute).items() if v is not None}
        if args.sparsity is not None:
            overrides.update(sparsity=args.sparsity, pattern="unstructured", layer_sparsity={})
        if args.pattern is not None:
            overrides.update(pattern=args.pattern, sparsity=None, layer_sparsity={})
        return plan.with_fields(source=f"plan {args.plan} with command-line overrides", **overrides)
    pattern = args.pattern or "unstructured"
    sparsity = args.sparsity if args.sparsity is not None else (None if args.pattern else 0.5)
    return plan_for_method(args.method, sparsity=sparsity, pattern=pattern, mode=args.mode or "one-shot", update=args.update,
                           refine=args.refine, permute=args.permute)


def plan_defaults(args: argparse.Namespace, plan: PruningPlan) -> list[str]:
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


def fitted_plan(args: argparse.Namespace, plan: PruningPlan, model) -> PruningPlan:
    """The plan checked against the model's prunable layers (or carried over with --transfer), with
    the record of this model that the exported plan.yaml keeps (pruning/transfer.py)."""
    # deferred: as in run, the model stack loads only when the command runs
    from ..models.adapters import prunable_shapes
    from ..pruning.transfer import check_plan, model_record, transfer_plan

    shapes = prunable_shapes(model)
    if args.transfer:
        plan, line = transfer_plan(plan, shapes, args.transfer, args.model)
        print(line)
        return plan
    for note in check_plan(plan, shapes, args.model):
        print(note)
    return plan.with_fields(model=model_record(args.model, shapes).model_dump())


def run(args: argparse.Namespace) -> int:
    # deferred: a subcommand loads the model stack only when it runs (--help and argument errors answer at once)
    from ..data import calibration_windows, check_source, evaluation_windows
    from ..evaluation.kl import kl_to_dense
    from ..evaluation.perplexity import perplexity
    from ..evaluation.streamed import streamed_head_inputs, streamed_kl
    from ..export import export_pruned
    from ..models.adapters import decoder_blocks, prunable_linears
    from ..models.loading import check_model_spec, load_model
    from ..provenance import environment
    from ..pruning.apply import needs_statistics, prune_model

    paths.check(args, out=paths.EXPORT)  # every path option, before anything is read
    plan = build_plan(args)  # fail on a bad plan before loading anything
    from_plan = plan_defaults(args, plan)
    common.resolve_quick(args)
    sources = [] if args.no_eval else common.eval_sources(args.eval or "wikitext2")
    out = Path(args.out)
    check_model_spec(args.model)
    common.memory_check(args, "prune", n_windows=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size,
                        with_gram=plan.needs_gram, update=plan.update)
    if needs_statistics(plan):  # open the text before the model loads, so a bad source fails at once
        check_source(args.calib, "calibration", data_dir=args.data_dir, split=args.calib_split, text_field=args.text_field)
    for s in sources:
        check_source(s, "evaluation", data_dir=args.data_dir)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir, offload=args.offload,
                        offload_folder=args.offload_folder)
    model, tok, device, store = loaded.model, loaded.tokenizer, loaded.info["device"], loaded.store
    bos = common.use_bos(args, model)
    print(f"model: {args.model} ({loaded.info.get('n_params', 0) / 1e6:.1f}M parameters, {loaded.info['model_type']}, {device})")
    plan = fitted_plan(args, plan, model)  # refused here, before any calibration, when it does not fit the model
    print(f"plan:  {plan.describe()}")
    if from_plan:
        print(f"from the plan file: calibration {args.calib} {args.nsamples} x {args.seqlen}, seed {args.seed}"
              + (f", data dir {args.data_dir}" if "data_dir" in from_plan else "")
              + (f"; evaluation {args.eval} seqlen {args.eval_seqlen}" if "eval" in from_plan else "")
              + " (command-line flags override)")

    calib = None
    if needs_statistics(plan):
        calib = calibration_windows(args.calib, tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                    data_dir=args.data_dir, split=args.calib_split, text_field=args.text_field, bos=bos)
    evals = {s: evaluation_windows(s, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows, data_dir=args.data_dir, bos=bos)
             for s in sources}

    dense_ppl = {s: perplexity(model, w.input_ids, device=device, desc=f"dense ppl {s}", store=store) for s, w in evals.items()}
    if store is None:
        modules = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in prunable_linears(b).items()}
        dense_weights = {n: m.weight.data.clone() for n, m in modules.items()} if args.kl and evals else None
    else:  # offloaded: the dense LM-head inputs are kept, not the dense weights
        dense_heads = {s: [h.cpu() for h in streamed_head_inputs(model, store, w.input_ids, device=device, desc=f"dense {s}")]
                       for s, w in evals.items()} if args.kl else {}  # on the host until the pruned ones are formed

    result = prune_model(model, plan, None if calib is None else calib.input_ids, batch_size=args.batch_size, device=device,
                         cache_dir=args.cache_dir, use_cache=not args.no_cache, windows_info=None if calib is None else calib.info,
                         store=store)
    pruned_ppl = {s: perplexity(model, w.input_ids, device=device, desc=f"pruned ppl {s}", store=store) for s, w in evals.items()}
    if store is None:
        kl = {s: kl_to_dense(model, modules, dense_weights, w.input_ids, device=device) for s, w in evals.items()} if dense_weights else {}
    else:
        kl = {s: streamed_kl(model, dense_heads[s], streamed_head_inputs(model, store, evals[s].input_ids, device=device,
                                                                         desc=f"pruned {s}")) for s in dense_heads}

    metrics = {
        "model": loaded.info,
        "plan": plan.to_dict(),
        "mode": plan.mode,
        "calibration": None if calib is None else calib.info,
        "statistics": result.info.get("calibration"),
        "prune_seconds": result.info["seconds"],
        "realised_sparsity": round(result.realised_sparsity, 6),
        "evaluation": {s: {"data": evals[s].info, "dense": dense_ppl[s], "pruned": pruned_ppl[s], **({"kl": kl[s]} if s in kl else {})}
                       for s in evals},
        "layers": result.layers,
        **({"pattern_note": permuted_note(plan)} if result.permutations else {}),
        "environment": environment(device),
        "command": shlex.join(["automl-prune", *sys.argv[1:]]),
        "settings": {k: v for k, v in vars(args).items() if k != "func"},
    }
    export_pruned(model, tok, out, plan, metrics, permutations=result.permutations, store=store)
    _summary(plan, result, dense_ppl, pruned_ppl, kl, out)
    return 0


def _summary(plan, result, dense_ppl, pruned_ppl, kl, out: Path) -> None:
    print(f"\npruned {len(result.layers)} linear layers in {result.info['seconds']:.1f} s; realised sparsity "
          f"{result.realised_sparsity:.2%} ({plan.mode})")
    if dense_ppl:
        print(f"{'data':<14}{'windows':>8}{'dense ppl':>12}{'pruned ppl':>12}" + ("{:>12}".format("KL") if kl else ""))
        for s in dense_ppl:
            d, p = dense_ppl[s], pruned_ppl[s]
            extra = f"{kl[s]['kl']:>12.4f}" if s in kl else ""
            print(f"{s:<14}{d['n_windows']:>8}{d['ppl']:>12.3f}{p['ppl']:>12.3f}{extra}")
    if result.permutations:
        print(permuted_note(plan))
    print(f"saved to {out}/ (model, plan.yaml, metrics.json{', ' + PERMUTATIONS_FILE if result.permutations else ''})")


def permuted_note(plan) -> str:
    return (f"the mask is {plan.pattern} in the permuted input-channel order saved in {PERMUTATIONS_FILE} "
            f"(per layer); in the original channel order it is not {plan.pattern}")
