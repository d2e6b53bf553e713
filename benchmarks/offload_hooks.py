"""Why the block store is not accelerate's offload hooks: the same forward-pass objective (perplexity
of N windows) on a model whose decoder blocks are offloaded to disk, (a) with accelerate's
``disk_offload`` (weights brought in by a hook on every module's every forward call, so once per
window per block), (b) with automl-prune's block store (each block brought in once and every window
run through it), each in a fresh process: wall time, peak resident memory, and the two perplexities.

    python benchmarks/offload_hooks.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from setup_args import write_results

RESULTS = Path(__file__).resolve().parent / "results"


def peak_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args) -> dict:
    import torch

    from automl_prune.data import evaluation_windows
    from automl_prune.evaluation.perplexity import perplexity
    from automl_prune.models.loading import load_model

    with tempfile.TemporaryDirectory(prefix="automl-prune-hooks-") as tmp:
        if args.way == "accelerate":
            from accelerate import disk_offload

            loaded = load_model(args.model, device="cpu")
            disk_offload(loaded.model, tmp, execution_device=torch.device("cpu"))
            store = None
        else:
            loaded = load_model(args.model, device="cpu", offload="disk", offload_folder=tmp)
            store = loaded.store
        ids = evaluation_windows("wikitext2", loaded.tokenizer, seqlen=args.seqlen, max_windows=args.windows,
                                 data_dir=args.data_dir).input_ids
        start = time.perf_counter()
        out = perplexity(loaded.model, ids, batch_size=1, progress=False, store=store)
        seconds = time.perf_counter() - start
    return dict(way=args.way, seconds=round(seconds, 2), peak_rss_mib=round(peak_mib(), 1), ppl=out["ppl"], nll=out["nll"],
                windows=int(ids.shape[0]), seqlen=int(ids.shape[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--stem", default="offload_hooks")
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--way", help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args()
    if args.way:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for way in ("accelerate", "block store"):
        cmd = [sys.executable, __file__, "--way", way, "--model", args.model, "--windows", str(args.windows),
               "--seqlen", str(args.seqlen)] + (["--data-dir", args.data_dir] if args.data_dir else [])
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"{way} failed:\n{run.stderr[-3000:]}")
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    a, b = rows
    lines = [f"Perplexity of {a['windows']} x {a['seqlen']} WikiText-2 windows, {args.model}, decoder blocks offloaded to "
             "disk, CPU, each way in a fresh process.", "",
             "| way | seconds | peak RSS (MiB) | perplexity |", "|---|---:|---:|---:|"]
    lines += [f"| {r['way']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['ppl']:.4f} |" for r in rows]
    lines += ["", f"accelerate's hooks / block store: {a['seconds'] / b['seconds']:.2f}x the time; perplexities "
              f"{'equal' if abs(a['nll'] - b['nll']) <= 1e-6 * abs(b['nll']) else 'differ'}."]
    from automl_prune.provenance import environment

    write_results(args.results_dir, args.stem, dict(model=args.model, rows=rows, environment=environment("cpu")),
                  "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
