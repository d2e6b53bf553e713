"""`automl-prune eval`: perplexity (and optionally KL to a dense model) of a model, as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import common


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model's perplexity on held-out text; JSON out",
                       description="Perplexity of a model (an exported folder, a hub id, a GGUF or an alias) with the "
                                   "WikiText-2 protocol of the references: windows of --seqlen tokens, exp(mean NLL).")
    common.add_model_options(p)
    common.add_data_dir_option(p)
    p.add_argument("--data", dest="eval", default="wikitext2", metavar="NAMES",
                   help="comma-separated sources: wikitext2, c4 (held out), wiki-offline (held out), local files")
    p.add_argument("--seqlen", dest="eval_seqlen", type=int, default=None, metavar="L", help="window length (default 2048; 1024 with --quick)")
    p.add_argument("--windows", dest="eval_windows", type=int, default=None, metavar="N", help="first N windows only (default all; 16 with --quick)")
    p.add_argument("--quick", action="store_true", help="16 windows of 1024 tokens")
    p.add_argument("--kl-dense", metavar="M", help="also report KL(dense || this model), dense = model M of the same architecture")
    p.add_argument("--json", metavar="FILE", help="write the results here (default: print to stdout)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import evaluation_windows
    from ..errors import UserError
    from ..evaluation.kl import kl_to_dense
    from ..evaluation.perplexity import perplexity
    from ..models.adapters import decoder_blocks, prunable_linears
    from ..models.loading import load_model
    from ..provenance import environment

    common.resolve_quick(args)
    sources = common.eval_sources(args.eval)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.info["device"]
    bos = common.use_bos(args, model)
    modules = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(model)) for n, lin in prunable_linears(b).items()}
    dense = None
    if args.kl_dense:
        ref = load_model(args.kl_dense, dtype=args.dtype, device=args.device, cache_dir=args.cache_dir).model
        ref_modules = {f"{i}.{n}": lin for i, b in enumerate(decoder_blocks(ref)) for n, lin in prunable_linears(b).items()}
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
    zeros = sum(int((m.weight == 0).sum()) for m in modules.values())
    total = sum(m.weight.numel() for m in modules.values())
    report = {"model": loaded.info, "sparsity_of_prunable_layers": round(zeros / total, 6), "results": results,
              "environment": environment(device)}
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0
