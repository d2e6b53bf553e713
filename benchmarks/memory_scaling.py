"""Peak process memory of the pruning work against model depth: statistics capture, pruning with
Wanda, SparseGPT and ADMM, and one search candidate, each in a fresh process (a process's peak
resident memory only grows, so every phase gets its own), on random tiny Llamas of one width and
growing depth and on real models.

This is the in-memory baseline of issue 17 (models larger than one device): every phase holds the
whole model, a dense copy of its prunable weights where the phase keeps one, and the statistics of
every block. Block-streamed offload (``offload: cpu | disk``) is not built yet; its columns join
this table when it is, so the two are measured side by side.

    python benchmarks/memory_scaling.py --data-dir ../shared/data

Per row: the resident memory once the model is loaded, the phase's peak, the peak above the
loaded model, and (CUDA) the device's peak allocation. The summary gives each phase's growth of
the peak from the smallest to the largest depth of the tiny family.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from setup_args import add_device, synchronize, write_results

RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("capture", "wanda", "sparsegpt", "admm", "candidate")
DEFAULT_MODELS = "tiny-256x4,tiny-256x8,tiny-256x16,tiny-256x32,smollm2-135m"


def rss_mib() -> float:
    """The process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_phase(args) -> dict:
    """One phase in this process; returns its figures."""
    import torch

    from automl_prune.calibration.dense import dense_statistics
    from automl_prune.candidate_context import CandidateContext
    from automl_prune.data import calibration_windows
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from automl_prune.models.loading import load_model, resolve_device
    from automl_prune.pruning.apply import prune_model
    from automl_prune.pruning.methods import plan_for_method
    from objectives import make_objective

    device = resolve_device(args.device or "cpu")
    loaded = load_model(args.model, device=str(device))
    model = loaded.model
    ids = calibration_windows(args.calib, loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=0,
                              data_dir=args.data_dir).input_ids
    blocks = decoder_blocks(model)
    prunable = sum(lin.weight.numel() for b in blocks for lin in prunable_linears(b).values())
    loaded_rss = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    if args.phase == "capture":
        dense_statistics(model, ids, with_gram=True, device=device, use_cache=False, progress=False)
    elif args.phase in ("wanda", "sparsegpt", "admm"):
        prune_model(model, plan_for_method(args.phase, sparsity=0.5), ids, device=device, use_cache=False, progress=False)
    elif args.phase == "candidate":  # a search worker: context (dense copy, Gram statistics), objective, one candidate
        stats = dense_statistics(model, ids, with_gram=True, device=device, use_cache=False, progress=False).stats
        ctx = CandidateContext(model, stats=stats, probe_ids=ids[: min(2, ids.shape[0])], device=device)
        objective = make_objective("layer_recon", weighting="fisher", fisher_windows=1)
        objective.prepare(ctx)
        result = ctx.apply(plan_for_method("bawa", sparsity=0.5))
        objective(ctx, result)
    else:
        raise SystemExit(f"unknown phase {args.phase!r}; choose from {', '.join(PHASES)}")
    synchronize(device)
    seconds = time.perf_counter() - start
    out = dict(model=args.model, phase=args.phase, blocks=len(blocks), params=sum(p.numel() for p in model.parameters()),
               prunable=prunable, loaded_rss_mib=round(loaded_rss, 1), peak_rss_mib=round(rss_mib(), 1),
               seconds=round(seconds, 2), device=str(device))
    out["phase_rss_mib"] = round(out["peak_rss_mib"] - out["loaded_rss_mib"], 1)
    if device.type == "cuda":
        out["device_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def growth(rows: list[dict], phase: str) -> float | None:
    """Peak RSS of the deepest tiny model over the shallowest one, minus 1 (same width)."""
    tiny = sorted((r for r in rows if r["phase"] == phase and r["model"].startswith("tiny-")), key=lambda r: r["blocks"])
    if len(tiny) < 2:
        return None
    return tiny[-1]["peak_rss_mib"] / tiny[0]["peak_rss_mib"] - 1


def markdown(result: dict) -> str:
    phases = result["phases"]
    lines = [f"Peak resident memory per phase, each in a fresh process ({result['calibration']}; in memory: no offload; "
             f"{result['device']}). Cells: peak RSS (MiB), and in brackets the peak above the loaded model.", "",
             "| model | blocks | prunable | loaded (MiB) | " + " | ".join(phases) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(phases)]
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    for m in models:
        rows = {r["phase"]: r for r in result["rows"] if r["model"] == m}
        first = next(iter(rows.values()))
        cells = [f"{rows[p]['peak_rss_mib']:.0f} (+{rows[p]['phase_rss_mib']:.0f})" if p in rows else "-" for p in phases]
        lines.append(f"| {m} | {first['blocks']} | {first['prunable'] / 1e6:.1f} M | {first['loaded_rss_mib']:.0f} | "
                     + " | ".join(cells) + " |")
    g = {p: growth(result["rows"], p) for p in phases}
    if any(v is not None for v in g.values()):
        lines += ["", "Growth of the peak from the shallowest to the deepest tiny model: "
                  + ", ".join(f"{p} {v:+.0%}" for p, v in g.items() if v is not None) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated: tiny-WIDTHxDEPTH, model aliases or paths")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer of the tiny models")
    ap.add_argument("--calib", default="c4")
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--data-dir", default=None)
    add_device(ap)
    ap.add_argument("--stem", default="memory_scaling")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--model", help=argparse.SUPPRESS)  # worker mode: one model ...
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # ... and one phase, figures as JSON on stdout
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args)))
        return

    from scaling import TINY, tiny_llama

    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise SystemExit(f"unknown phases {unknown}; choose from {', '.join(PHASES)}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="automl-prune-memory-") as tmp:
        for spec in args.models.split(","):
            source = tiny_llama(spec, Path(tmp), args.tokenizer) if TINY.match(spec) else spec
            for phase in phases:
                cmd = [sys.executable, __file__, "--model", source, "--phase", phase, "--calib", args.calib,
                       "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen)]
                cmd += ["--data-dir", args.data_dir] if args.data_dir else []
                cmd += ["--device", args.device] if args.device else []
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    raise SystemExit(f"{spec} {phase} failed:\n{run.stderr[-3000:]}")
                row = json.loads(run.stdout.strip().splitlines()[-1])
                row["model"] = spec
                rows.append(row)
                print(f"{spec:16s} {phase:10s} peak {row['peak_rss_mib']:8.0f} MiB (+{row['phase_rss_mib']:.0f})  "
                      f"{row['seconds']:7.1f} s", flush=True)
    result = dict(calibration=f"{args.calib} {args.nsamples} x {args.seqlen}", device=rows[0]["device"] if rows else None,
                  phases=phases, rows=rows, growth={p: growth(rows, p) for p in phases})
    from automl_prune.provenance import environment

    result["environment"] = environment(result["device"] or "cpu")
    write_results(args.results_dir, args.stem, result, markdown(result))


if __name__ == "__main__":
    main()
