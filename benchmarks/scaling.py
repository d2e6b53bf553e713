"""How a candidate's cost grows with model size: tiny Llamas of growing width and depth (random
weights, SmolLM2's tokenizer and vocabulary), then SmolLM2-135M and Gemma-3-270M, on the same
calibration text and the same study config.

Per model, in one process and in order of size: the calibration capture (statistics with Gram
matrices, no cache), one plain forward pass over the calibration tokens, and the median cost of K
random candidates of the config's space (decode, masks on the working copy, objectives; as
benchmarks/search_throughput.py). Parameter counts: all parameters, and the prunable ones (the
linear weights of the decoder blocks, what a candidate masks). The table ends with the log-log
slope of candidate time against prunable parameters.

    python benchmarks/scaling.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import functools
import re
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from search_throughput import forward_seconds, peak_rss_mib, time_candidates
from setup_args import add_device, write_results

from automl_prune.models.loading import resolve_device
from automl_prune.provenance import environment
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.models.loading import load_model
from automl_prune.search.study.config import load_config
from automl_prune.search.execution.setup import load_search
from automl_prune.search.study.definition import Study

RESULTS = Path(__file__).resolve().parent / "results"
TINY = re.compile(r"^tiny-(\d+)x(\d+)$")
DEFAULT_MODELS = "tiny-64x2,tiny-128x4,tiny-256x6,tiny-384x8,smollm2-135m,gemma3-270m"


@functools.lru_cache(maxsize=None)
def tokenizer_of(source: str):
    """The tokenizer of a model alias or folder, loaded once for all the tiny models."""
    return load_model(source, device="cpu").tokenizer


def tiny_llama(spec: str, folder: Path, tokenizer_source: str) -> str:
    """A random Llama ``tiny-WIDTHxDEPTH`` (MLP 2.67 x width, 64-dim heads) saved with SmolLM2's
    tokenizer; returns its folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    width, depth = map(int, TINY.match(spec).groups())
    tok = tokenizer_of(tokenizer_source)
    heads = max(1, width // 64)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=int(width * 8 / 3) // 8 * 8,
                         num_hidden_layers=depth, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    out = folder / spec
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def measure(config, candidates: int, seed: int) -> dict:
    study = Study.from_config(config)
    objectives = study.objectives
    t = time.perf_counter()
    ctx, profile, space = load_search(study, progress=False, use_cache=False)
    setup_s = time.perf_counter() - t
    ctx.restore()
    fwd = forward_seconds(ctx, ctx.calib_ids, repeats=1)
    rows, _, _ = time_candidates(ctx, profile, space, objectives, candidates, seed)
    times, masks = [r["candidate"] for r in rows], [r["masks"] for r in rows]
    prunable = sum(lin.weight.numel() for block in decoder_blocks(ctx.model) for lin in prunable_linears(block).values())
    cand = statistics.median(times)
    return dict(params=sum(p.numel() for p in ctx.model.parameters()), prunable_params=prunable,
                blocks=len(ctx.stats), capture_seconds=round(ctx.info["statistics"]["seconds"], 2),
                setup_seconds=round(setup_s, 2), forward_seconds=round(fwd, 3), candidate_seconds=round(cand, 3),
                masks_seconds=round(statistics.median(masks), 3), candidate_vs_forward=round(cand / fwd, 3),
                candidates_per_minute=round(60 / cand, 2), peak_rss_mib=peak_rss_mib(), model_info=ctx.info["model"])


def config_label(path: str) -> str:
    """The config path relative to the repository when it lies inside it (as the README shows it)."""
    full = Path(path).resolve()
    root = RESULTS.parents[1]
    return str(full.relative_to(root)) if full.is_relative_to(root) else path


def slope(rows: list[dict]) -> float | None:
    """Least-squares slope of log(candidate seconds) on log(prunable parameters)."""
    if len(rows) < 2:
        return None
    x = np.log([r["prunable_params"] for r in rows])
    y = np.log([r["candidate_seconds"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def markdown(result: dict) -> str:
    lines = [f"{result['config']}: {result['candidates']} random candidates per model (seed {result['seed']}), objectives "
             f"{', '.join(result['objectives'])}; calibration {result['calibration']}, one-shot, CPU "
             f"({result['environment']['threads']} threads). Tiny models: random Llamas WIDTH x DEPTH with SmolLM2's "
             f"vocabulary. Peak memory is the process's high-water mark after that model (models run smallest first).", "",
             "| model | parameters | prunable | capture (s) | forward (s) | candidate (s) | of which masks (s) | "
             "candidate / forward | candidates / min | peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.1f} M | {r['prunable_params'] / 1e6:.1f} M | {r['capture_seconds']:.1f} | "
                     f"{r['forward_seconds']:.2f} | {r['candidate_seconds']:.3f} | {r['masks_seconds']:.3f} | "
                     f"{r['candidate_vs_forward']:.3f} | {r['candidates_per_minute']:.1f} | {r['peak_rss_mib']:.0f} |")
    if result.get("slope") is not None:
        lines += ["", f"Candidate time grows as (prunable parameters)^{result['slope']:.2f} over these models "
                      "(least-squares slope in log-log)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/bawa-tpe-50.yaml", help="study config: space, objectives, calibration")
    ap.add_argument("--models", default=DEFAULT_MODELS, help="comma-separated: tiny-WIDTHxDEPTH, model aliases or paths")
    ap.add_argument("--tokenizer", default="smollm2-135m", help="tokenizer of the tiny models")
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--cache-dir", default=None)
    add_device(ap)
    ap.add_argument("--nsamples", type=int, default=None, help="override the config's calibration sample count")
    ap.add_argument("--seqlen", type=int, default=None, help="override the config's calibration seqlen")
    ap.add_argument("--stem", default="scaling")
    ap.add_argument("--results-dir", default=str(RESULTS))
    args = ap.parse_args()

    rows = []
    overrides = {k: v for k, v in dict(data_dir=args.data_dir, device=args.device).items() if v}
    base = load_config(args.config, overrides or None)
    calib = base.calibration.model_copy(update={k: v for k, v in dict(nsamples=args.nsamples, seqlen=args.seqlen).items() if v})
    with tempfile.TemporaryDirectory(prefix="automl-prune-scaling-") as tmp:
        for spec in args.models.split(","):
            model = tiny_llama(spec, Path(tmp), args.tokenizer) if TINY.match(spec) else spec
            config = base.model_copy(update=dict(model=model, calibration=calib, cache_dir=args.cache_dir or base.cache_dir))
            row = dict(model=spec, **measure(config, args.candidates, args.seed))
            rows.append(row)
            print(f"{spec:16s} prunable {row['prunable_params'] / 1e6:7.1f} M  candidate {row['candidate_seconds']:7.3f} s  "
                  f"forward {row['forward_seconds']:7.2f} s  capture {row['capture_seconds']:6.1f} s", flush=True)
    result = dict(config=config_label(args.config), candidates=args.candidates, seed=args.seed,
                  objectives=[o.name for o in base.objectives], calibration=f"{calib.source} {calib.nsamples} x {calib.seqlen} seed {calib.seed}",
                  rows=rows, slope=slope(rows), environment=environment(resolve_device(base.device)))
    write_results(args.results_dir, args.stem, result, markdown(result))


if __name__ == "__main__":
    main()
