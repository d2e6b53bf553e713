"""The price of the forward-pass objective: KL(dense || pruned) per candidate on 1,024 and 8,192
probe tokens, against one held-out perplexity evaluation of 16 windows, same run, same machine.

The KL objective keeps the dense model's top-k log-probabilities of every probe token (computed
once per context, its time and memory reported) and runs one forward of the candidate per call.
A candidate = apply a plan's masks to the working copy (the weights hold another plan before, as in
a search; its metric's scores computed afresh) + the KL. The held-out evaluation is what the final
comparison runs per plan once its masks are applied: perplexity over the held-out windows (16 x
1,024 tokens by default).

    python benchmarks/kl_cost.py            # the packaged quickstart (automl_prune/presets/quickstart.yaml)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from automl_prune.evaluation.perplexity import perplexity
from automl_prune.provenance import environment
from automl_prune.pruning.methods import plan_for_method
from automl_prune.search.study.config import load_config, preset
from automl_prune.search.execution.setup import build_context
from objectives import make_objective
from setup_args import add_device, synchronize, write_results

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(preset("quickstart")))
    ap.add_argument("--data-dir", default=None)
    add_device(ap)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1024, 8192], help="probe tokens per KL call")
    ap.add_argument("--probe-seqlen", type=int, default=512)
    ap.add_argument("--heldout-windows", type=int, default=16)
    ap.add_argument("--topk", type=int, default=512)
    ap.add_argument("--candidates", type=int, default=3, help="timed candidates per token count (median)")
    ap.add_argument("--stem", default=None)
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()

    overrides = {k: v for k, v in dict(data_dir=args.data_dir, device=args.device).items() if v}
    config = load_config(args.config, overrides or None)
    windows = [max(1, t // args.probe_seqlen) for t in args.tokens]
    config = config.model_copy(update={
        "probe": config.probe.model_copy(update={"nsamples": max(windows), "seqlen": args.probe_seqlen}),
        "heldout": config.heldout.model_copy(update={"windows": args.heldout_windows})})
    ctx = build_context(config, progress=False)
    plans = [plan_for_method(m, sparsity=0.5, pattern="unstructured") for m in ("wanda", "bawa", "stade", "ria")]

    ctx.apply(plans[0])
    synchronize(ctx.device)
    t0 = time.perf_counter()
    heldout = perplexity(ctx.model, ctx.heldout_ids, device=ctx.device, progress=False)
    synchronize(ctx.device)
    heldout_s = time.perf_counter() - t0
    h_tokens = int(ctx.heldout_ids.numel())

    rows = []
    for tokens, w in zip(args.tokens, windows):
        kl = make_objective("kl", topk=args.topk, windows=w, seqlen=args.probe_seqlen)
        t0 = time.perf_counter()
        kl.prepare(ctx)
        synchronize(ctx.device)
        prepare_s = time.perf_counter() - t0
        idx, lp, rest = ctx.memo[kl._memo_key()]
        kept = sum(t.numel() * t.element_size() for t in (idx, lp, rest) if t is not None)
        times = []
        for i in range(args.candidates):
            ctx.scores.clear()  # every candidate's masks computed from its metric's scores, none stored
            t0 = time.perf_counter()
            result = ctx.apply(plans[(i + 1) % len(plans)])
            kl(ctx, result)
            synchronize(ctx.device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append(dict(tokens=w * args.probe_seqlen, windows=w, prepare_seconds=round(prepare_s, 2),
                         dense_reference_mib=round(kept / 2**20, 1), candidate_seconds=round(med, 3),
                         vs_heldout=round(med / heldout_s, 3)))
    ctx.restore()
    result = dict(config=args.config, topk=args.topk, probe_seqlen=args.probe_seqlen, heldout_windows=args.heldout_windows,
                  heldout_tokens=h_tokens, heldout_seconds=round(heldout_s, 3), heldout_ppl=round(heldout["ppl"], 3),
                  rows=rows, threads=torch.get_num_threads(), environment=environment(ctx.device), context=ctx.info)
    md = (f"KL(dense || pruned) per candidate vs one held-out evaluation ({args.config}; top-{args.topk} dense "
          f"log-probabilities kept; probe windows of {args.probe_seqlen} tokens; held-out {args.heldout_windows} windows, "
          f"{h_tokens} tokens: {heldout_s:.2f} s; {torch.get_num_threads()} threads)\n\n"
          "| probe tokens | dense reference: once (s) | kept (MiB) | candidate: masks + KL, median (s) | / held-out evaluation |\n"
          "|---:|---:|---:|---:|---:|\n")
    for r in rows:
        md += (f"| {r['tokens']} | {r['prepare_seconds']:.2f} | {r['dense_reference_mib']:.1f} | {r['candidate_seconds']:.2f} "
               f"| {r['vs_heldout']:.2f} |\n")
    write_results(args.results_dir, args.stem or f"kl_cost_{Path(args.config).stem}", result, md)


if __name__ == "__main__":
    main()
