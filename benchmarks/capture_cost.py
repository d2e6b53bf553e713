"""Cost of capturing calibration statistics relative to one plain forward pass over the same tokens.

Measured side by side in one run (repeats interleaved, best of each kept) so that the ratio
survives a shared, noisy machine. Writes JSON and a markdown table under benchmarks/results/.

    python benchmarks/capture_cost.py --model smollm2-135m --calib c4 --nsamples 32 --seqlen 512
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from setup_args import add_device, add_model_and_data, synchronize

import torch

from automl_prune.calibration.blocks import BlockRunner
from automl_prune.calibration.cache import load_stats, save_stats
from automl_prune.calibration.capture import capture_statistics
from automl_prune.data import calibration_windows
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.models.loading import load_model, resolve_device
from automl_prune.provenance import environment

RESULTS = Path(__file__).resolve().parent / "results"


def plain_forward(model, ids, batch_size, device="cpu"):
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch_size):
            model.model(input_ids=ids[s : s + batch_size].to(device), use_cache=False)  # decoder only: no lm_head logits


def capture(model, ids, batch_size, gram, device="cpu"):
    runner = BlockRunner(model, decoder_blocks(model), ids, batch_size=batch_size, device=device)
    return capture_statistics(runner, prunable_linears, mode="one-shot", with_gram=gram, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_data(ap, evaluation=False)
    add_device(ap)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "capture_cost"))
    args = ap.parse_args()

    device = resolve_device(args.device or "cpu")
    loaded = load_model(args.model, device=str(device), cache_dir=args.cache_dir)
    model = loaded.model
    ids = calibration_windows(args.calib, loaded.tokenizer, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                              data_dir=args.data_dir).input_ids
    cases = {
        "plain forward (decoder, no logits)": lambda: plain_forward(model, ids, args.batch_size, device),
        "capture, per-channel statistics": lambda: capture(model, ids, args.batch_size, False, device),
        "capture, with Gram matrices": lambda: capture(model, ids, args.batch_size, True, device),
    }
    best = {k: float("inf") for k in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            synchronize(device)
            t = time.perf_counter()
            fn()
            synchronize(device)
            best[name] = min(best[name], time.perf_counter() - t)
    stats = capture(model, ids, args.batch_size, True, device)
    tmp = Path(args.out + "-cache")
    entry = save_stats(tmp, "k" * 64, stats, {})
    entry_mb = sum(f.stat().st_size for f in entry.iterdir()) / 2**20
    t = time.perf_counter()
    loaded_stats = load_stats(tmp, "k" * 64)
    if loaded_stats is None:
        raise SystemExit(f"the statistics just written to {entry} did not load back")
    # safetensors maps the file lazily: read every tensor so the figure includes the actual I/O
    checksum = sum(float(getattr(s, f).sum()) for block in loaded_stats for s in {id(v): v for v in block.values()}.values()
                   for f in ("sum", "sumsq", "abs_sum", "absmax", "gram") if getattr(s, f) is not None)
    warm_load = time.perf_counter() - t
    if not checksum == checksum:  # NaN would mean a broken round trip
        raise SystemExit("NaN in the reloaded statistics")

    base = best["plain forward (decoder, no logits)"]
    tokens = ids.numel()
    rows = [dict(case=k, seconds=round(v, 3), ratio_to_forward=round(v / base, 3), tokens_per_s=round(tokens / v, 1)) for k, v in best.items()]
    report = dict(model=args.model, calib=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, batch_size=args.batch_size,
                  repeats=args.repeats, tokens=tokens, rows=rows, warm_cache_load_seconds=round(warm_load, 3),
                  cache_entry_mib=round(entry_mb, 1), threads=torch.get_num_threads(),
                  device=str(device), environment=environment(device))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".json").write_text(json.dumps(report, indent=2))
    lines = [f"Capture cost on {args.model}, {args.nsamples} x {args.seqlen} {args.calib} tokens, batch {args.batch_size}, "
             f"best of {args.repeats} ({torch.get_num_threads()} threads)", "",
             "| case | seconds | x plain forward | tokens/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['case']} | {r['seconds']} | {r['ratio_to_forward']} | {r['tokens_per_s']} |" for r in rows]
    lines += ["", f"Warm load of the cached statistics (with Gram matrices, {entry_mb:.0f} MiB, every tensor read): {warm_load:.2f} s"]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
