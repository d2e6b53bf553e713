"""`automl-prune eval`: perplexity (and optionally KL to a dense model and zero-shot accuracy) of a
model, as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from ..atomic import write_text_atomic
from ..errors import UserError
from . import common, paths


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model's perplexity on held-out text (and zero-shot accuracy); JSON out",
                       description="Perplexity of a model (an exported folder, a hub id, a GGUF or an alias) with the "
                                   "WikiText-2 protocol of the references: windows of --seqlen tokens, exp(mean NLL). "
                                   "With --zero-shot, also zero-shot accuracy with lm-evaluation-harness's prompts and "
                                   "metrics (then perplexity runs only when --data is given).")
    common.add_model_options(p)
    common.add_data_dir_option(p)
    p.add_argument("--data", dest="eval", default=None, metavar="NAMES",
                   help="comma-separated sources: wikitext2, c4 (held out), wiki-offline (held out), local files "
                        "(default wikitext2; none with --zero-shot unless given)")
    p.add_argument("--seqlen", dest="eval_seqlen", type=int, default=None, metavar="L", help="window length (default 2048; 1024 with --quick)")
    p.add_argument("--windows", dest="eval_windows", type=int, default=None, metavar="N", help="first N windows only (default all; 16 with --quick)")
    p.add_argument("--quick", action="store_true", help="16 windows of 1024 tokens")
    p.add_argument("--kl-dense", metavar="M", help="also report KL(dense || this model), dense = model M of the same architecture")
    z = p.add_argument_group("zero-shot accuracy (lm-evaluation-harness conventions)")
    z.add_argument("--zero-shot", metavar="TASKS",
                   help="comma-separated tasks: piqa, boolq, arc_easy, arc_challenge, winogrande, hellaswag, lambada_openai "
                        "(alias lambada), or 'all'; read from --data-dir's zeroshot/ folder, else from the Hugging Face hub")
    z.add_argument("--zero-shot-limit", type=int, default=None, metavar="N",
                   help="first N documents of each task (lm-eval's --limit; default all)")
    z.add_argument("--zero-shot-batch-size", type=int, default=8, metavar="B", help="requests per forward (default 8)")
    z.add_argument("--backend", default="builtin", choices=["builtin", "lm-eval"],
                   help="builtin scorer (default), or lm_eval.simple_evaluate on the in-memory model (needs lm_eval)")
    p.add_argument("--json", metavar="FILE", help="write every detail as JSON here ('-': to stdout); without it a "
                                                "short summary is printed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred: a subcommand loads the model stack only when it runs (--help and argument errors answer at once)
    from ..data import check_source, evaluation_windows
    from ..evaluation.kl import kl_to_dense
    from ..evaluation.perplexity import perplexity
    from ..models.adapters import model_linears
    from ..models.loading import load_model
    from ..provenance import environment

    paths.check(args)  # every path option, before anything is read
    common.resolve_quick(args)
    zero_shot = _zero_shot_options(args)  # checked before any model is loaded
    sources = [] if zero_shot and args.eval is None else common.eval_sources(args.eval or "wikitext2")
    for s in sources:  # opened before the model loads, so a bad source fails at once
        check_source(s, "evaluation", data_dir=args.data_dir)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.info["device"]
    bos = common.use_bos(args, model)
    modules = model_linears(model)
    dense = None
    if args.kl_dense:
        ref = load_model(args.kl_dense, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir).model
        ref_modules = model_linears(ref)
        if ref_modules.keys() != modules.keys() or any(ref_modules[k].weight.shape != modules[k].weight.shape for k in modules):
            raise UserError(f"--kl-dense {args.kl_dense} does not have the same architecture as {args.model}")
        dense = {k: m.weight.data for k, m in ref_modules.items()}
    results = {}
    for s in sources:
        w = evaluation_windows(s, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows, data_dir=args.data_dir, bos=bos)
        results[s] = {"data": w.info, **perplexity(model, w.input_ids, device=device, desc=f"ppl {s}")}
        if dense is not None:
            results[s]["kl"] = kl_to_dense(model, modules, dense, w.input_ids, device=device)
        print(f"{s}: ppl {results[s]['ppl']:.3f} over {results[s]['n_windows']} x {results[s]['seqlen']} tokens", file=sys.stderr)
    zs = None
    if zero_shot:
        from ..evaluation.zeroshot import evaluate_zero_shot, format_table  # deferred: as in run()

        zs = evaluate_zero_shot(model, tok, zero_shot["tasks"], limit=zero_shot["limit"], data_dir=args.data_dir,
                                batch_size=zero_shot["batch_size"], device=device, backend=zero_shot["backend"],
                                add_special_tokens=True if bos else (False if args.bos == "never" else None))
        print(format_table(zs), file=sys.stderr)
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    total = sum(m.weight.numel() for m in modules.values())
    report = {"model": loaded.info, "sparsity_of_prunable_layers": round(zeros / total, 6), "results": results,
              "environment": environment(device)}
    if zs is not None:
        report["zero_shot"] = zs
    text = json.dumps(report, indent=2, default=str)
    if args.json == "-":
        print(text)
    else:
        if args.json:
            write_text_atomic(args.json, text)
        print(summary(report, args.json))
    return 0


def summary(report: dict, json_path: str | None) -> str:
    """What a person reads: the model, its sparsity, one line per perplexity source, the zero-shot average."""
    model = report["model"]
    lines = [f"model {model.get('spec', '?')} ({model.get('n_params', 0) / 1e6:.1f}M parameters), "
             f"sparsity of the prunable layers {report['sparsity_of_prunable_layers']:.2%}"]
    for source, r in report["results"].items():
        kl = f", KL to dense {r['kl']['kl']:.4f}" if "kl" in r else ""
        lines.append(f"{source}: perplexity {r['ppl']:.3f} over {r['n_windows']} x {r['seqlen']} tokens{kl}")
    zs = report.get("zero_shot")
    if zs:
        avg = zs.get("average") or {}
        lines.append(f"zero-shot average ({len(zs['tasks'])} tasks): acc {avg.get('acc', float('nan')):.4f}"
                     + (f", acc_norm {avg['acc_norm']:.4f}" if "acc_norm" in avg else ""))
    lines.append(f"details: {json_path}" if json_path else "details (data, settings, versions): add --json FILE (or --json - for stdout)")
    return "\n".join(lines)


def _zero_shot_options(args: argparse.Namespace) -> dict | None:
    """The checked --zero-shot options (None without --zero-shot); every mistake is a UserError."""
    if args.zero_shot is None:
        if args.zero_shot_limit is not None or args.backend != "builtin":
            raise UserError("--zero-shot-limit and --backend apply to --zero-shot TASKS; add --zero-shot")
        return None
    from ..evaluation.zeroshot import parse_tasks  # deferred: as in run()
    from ..evaluation.zeroshot.suite import check_backend, check_limit

    tasks = parse_tasks(args.zero_shot)
    if args.zero_shot_batch_size < 1:
        raise UserError(f"--zero-shot-batch-size must be a positive integer, got {args.zero_shot_batch_size}")
    try:
        limit = check_limit(args.zero_shot_limit)
    except UserError:
        raise UserError(f"--zero-shot-limit must be a positive integer, got {args.zero_shot_limit}") from None
    return dict(tasks=tasks, limit=limit, batch_size=args.zero_shot_batch_size, backend=check_backend(args.backend))
