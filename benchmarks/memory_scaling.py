"""Peak process memory of the pruning work against model depth, in memory and block-streamed:
statistics capture, pruning with Wanda, SparseGPT and ADMM, and one search candidate, each in a
fresh process (a process's peak resident memory only grows, so every phase gets its own), on random
tiny Llamas of one width and growing depth and on real models, with ``offload`` none (the whole
model, a dense copy where the phase keeps one, every block's statistics), cpu (the blocks' weights
in host memory, one block on the device) and disk (the blocks in memory-mapped safetensors, one
block in memory; statistics written per block and read one block at a time).

    python benchmarks/memory_scaling.py --data-dir ../shared/data

Per row: the resident memory once the model is loaded, the phase's peak, the peak above the loaded
model, the wall time (and its ratio to the in-memory run of the same phase), (CUDA) the device's
peak allocation, and the memory model's estimate of the peak (models/memory_model.py) with its
ratio to the measured peak. The summary gives each phase's growth of the peak from 8 to 32 blocks
of the tiny family per offload mode (target for disk: at most +15%) and the offload / in-memory
wall-time ratios (target for cpu: at most 1.5x).
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
DEFAULT_MODELS = "tiny-512x8,tiny-512x16,tiny-512x32,smollm2-135m"


def rss_mib() -> float:
    """This process's peak resident memory so far: VmHWM of /proc/self/status (the high-water mark of
    this process image). Not getrusage's ru_maxrss: on Linux that survives fork and exec, so a worker
    started by a parent that once held a larger model reported the parent's peak (the 1,000 MiB
    'loaded' rows of the earlier table were this parent's peak after building the 32-block model)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
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
    folder = tempfile.mkdtemp(prefix="automl-prune-memory-offload-") if args.offload == "disk" else None
    loaded = load_model(args.model, device=str(device), offload=args.offload, offload_folder=folder)
    model, store = loaded.model, loaded.store
    ids = calibration_windows(args.calib, loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=0,
                              data_dir=args.data_dir).input_ids
    blocks = decoder_blocks(model)
    prunable = sum(lin.weight.numel() for b in blocks for lin in prunable_linears(b).values())  # meta shapes count too
    loaded_rss = rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    if args.phase == "capture":
        dense_statistics(model, ids, with_gram=True, device=device, use_cache=False, progress=False, store=store)
    elif args.phase in ("wanda", "sparsegpt", "admm"):
        prune_model(model, plan_for_method(args.phase, sparsity=0.5), ids, device=device, use_cache=False, progress=False,
                    store=store)
    elif args.phase == "candidate":  # a search worker: context (dense copy, Gram statistics), objective, one candidate
        stats = dense_statistics(model, ids, with_gram=True, device=device, use_cache=False, progress=False, store=store).stats
        ctx = CandidateContext(model, stats=stats, probe_ids=ids[: min(2, ids.shape[0])], device=device, store=store)
        objective = make_objective("layer_recon", weighting="fisher", fisher_windows=1)
        objective.prepare(ctx)
        result = ctx.apply(plan_for_method("bawa", sparsity=0.5))
        objective(ctx, result)
    else:
        raise SystemExit(f"unknown phase {args.phase!r}; choose from {', '.join(PHASES)}")
    synchronize(device)
    seconds = time.perf_counter() - start
    out = dict(model=args.model, phase=args.phase, offload=args.offload, blocks=len(blocks),
               params=sum(p.numel() for p in model.parameters()), prunable=prunable, loaded_rss_mib=round(loaded_rss, 1),
               peak_rss_mib=round(rss_mib(), 1), seconds=round(seconds, 2), device=str(device))
    out["model_mib"] = round(modelled_peak(model, args, device) / 2**20, 1)
    out["phase_rss_mib"] = round(out["peak_rss_mib"] - out["loaded_rss_mib"], 1)
    if device.type == "cuda":
        out["device_peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def modelled_peak(model, args, device) -> int:
    """The memory model's peak for this row (host peak on a CPU device, device peak on CUDA)."""
    from automl_prune.models.memory_model import Job, ModelShape, estimate

    kind = {"capture": "capture", "candidate": "candidate"}.get(args.phase, "prune")
    update = args.phase if args.phase in ("sparsegpt", "admm") else "none"
    job = Job(kind, offload=args.offload, device=device.type, n_windows=args.nsamples, seqlen=args.seqlen,
              with_gram=args.phase in ("capture", "candidate"), update=update, probe_tokens=min(2, args.nsamples) * args.seqlen,
              probe_seqlen=args.seqlen, fisher_windows=1 if args.phase == "candidate" else 0)
    est = estimate(ModelShape.from_model(model), job)
    return est.device_peak if device.type == "cuda" else est.host_peak


def growth(rows: list[dict], phase: str, offload: str = "none", low: int = 8) -> float | None:
    """Peak RSS of the deepest tiny model over the one of ``low`` blocks (the shallowest when there is
    none), minus 1 (same width)."""
    tiny = sorted((r for r in rows if r["phase"] == phase and r.get("offload", "none") == offload and r["model"].startswith("tiny-")),
                  key=lambda r: r["blocks"])
    if len(tiny) < 2:
        return None
    base = next((r for r in tiny if r["blocks"] == low), tiny[0])
    return tiny[-1]["peak_rss_mib"] / base["peak_rss_mib"] - 1


def time_ratio(rows: list[dict], offload: str) -> tuple[float, float] | None:
    """(median, max) over models and phases of offload wall time / in-memory wall time."""
    import statistics

    base = {(r["model"], r["phase"]): r["seconds"] for r in rows if r.get("offload", "none") == "none"}
    ratios = [r["seconds"] / base[(r["model"], r["phase"])] for r in rows
              if r.get("offload") == offload and base.get((r["model"], r["phase"]))]
    return (statistics.median(ratios), max(ratios)) if ratios else None


def markdown(result: dict) -> str:
    phases, modes = result["phases"], result.get("offload", ["none"])
    lines = [f"Peak resident memory per phase, each in a fresh process ({result['calibration']}; {result['device']}). "
             "Cells: peak RSS (MiB), in brackets the memory model's estimate of it; the wall-time ratio to the "
             "in-memory run of the same phase after the offloaded cells.", "",
             "| model | blocks | offload | loaded (MiB) | " + " | ".join(phases) + " |",
             "|---|---:|---|---:|" + "---:|" * len(phases)]
    models = list(dict.fromkeys(r["model"] for r in result["rows"]))
    base = {(r["model"], r["phase"]): r["seconds"] for r in result["rows"] if r.get("offload", "none") == "none"}
    for m in models:
        for mode in modes:
            rows = {r["phase"]: r for r in result["rows"] if r["model"] == m and r.get("offload", "none") == mode}
            if not rows:
                continue
            first = next(iter(rows.values()))

            def cell(r):
                text = f"{r['peak_rss_mib']:.0f} ({r['model_mib']:.0f})" if "model_mib" in r else f"{r['peak_rss_mib']:.0f}"
                if mode != "none" and base.get((m, r["phase"])):
                    text += f" {r['seconds'] / base[(m, r['phase'])]:.2f}x"
                return text

            cells = [cell(rows[p]) if p in rows else "-" for p in phases]
            lines.append(f"| {m} | {first['blocks']} | {mode} | {first['loaded_rss_mib']:.0f} | " + " | ".join(cells) + " |")
    lines += [""]
    for mode in modes:
        g = {p: growth(result["rows"], p, mode) for p in phases}
        if any(v is not None for v in g.values()):
            lines.append(f"Growth of the peak from 8 to 32 blocks (tiny family), offload {mode}: "
                         + ", ".join(f"{p} {v:+.0%}" for p, v in g.items() if v is not None) + ".")
    for mode in modes:
        if mode != "none" and (t := time_ratio(result["rows"], mode)) is not None:
            lines.append(f"Wall time offload {mode} / in memory: median {t[0]:.2f}x, at most {t[1]:.2f}x (over models and phases).")
    ratios = [r["peak_rss_mib"] / r["model_mib"] for r in result["rows"] if r.get("model_mib")]
    if ratios:
        lines.append(f"Measured peak / memory model: {min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} rows.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated: tiny-WIDTHxDEPTH, model aliases or paths")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument("--offload", default="none,cpu,disk", help="comma-separated offload modes (none, cpu, disk)")
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
    modes = [m.strip() for m in args.offload.split(",") if m.strip()]
    if any(m not in ("none", "cpu", "disk") for m in modes):
        raise SystemExit(f"--offload takes none, cpu and disk, not {args.offload!r}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="automl-prune-memory-") as tmp:
        for spec in args.models.split(","):
            source = tiny_llama(spec, Path(tmp), args.tokenizer) if TINY.match(spec) else spec
            for phase, mode in ((p, m) for p in phases for m in modes):
                cmd = [sys.executable, __file__, "--model", source, "--phase", phase, "--calib", args.calib,
                       "--nsamples", str(args.nsamples), "--seqlen", str(args.seqlen), "--offload", mode]
                cmd += ["--data-dir", args.data_dir] if args.data_dir else []
                cmd += ["--device", args.device] if args.device else []
                run = subprocess.run(cmd, capture_output=True, text=True)
                if run.returncode != 0:
                    raise SystemExit(f"{spec} {phase} failed:\n{run.stderr[-3000:]}")
                row = json.loads(run.stdout.strip().splitlines()[-1])
                row["model"] = spec
                rows.append(row)
                print(f"{spec:16s} {phase:10s} {mode:5s} peak {row['peak_rss_mib']:8.0f} MiB (+{row['phase_rss_mib']:.0f}, "
                      f"model {row['model_mib']:.0f})  {row['seconds']:7.1f} s", flush=True)
    result = dict(calibration=f"{args.calib} {args.nsamples} x {args.seqlen}", device=rows[0]["device"] if rows else None,
                  phases=phases, offload=modes, rows=rows,
                  growth={m: {p: growth(rows, p, m) for p in phases} for m in modes},
                  time_ratio={m: time_ratio(rows, m) for m in modes if m != "none"})
    from automl_prune.provenance import environment

    result["environment"] = environment(result["device"] or "cpu")
    write_results(args.results_dir, args.stem, result, markdown(result))


if __name__ == "__main__":
    main()
