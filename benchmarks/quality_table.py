"""Held-out perplexity of every named method, unstructured and N:M, one-shot and sequential.

The model is loaded once; its dense weights are restored before each method. Results are written
after every row (JSON and a markdown table under benchmarks/results/), so a long run that is
interrupted keeps what it finished. ``--resume`` keeps the rows already in the output JSON (after
checking that it was written with the same model, calibration windows and evaluation windows) and
computes only the missing ones.

    python benchmarks/quality_table.py --model smollm2-135m --calib c4 --nsamples 32 --seqlen 512 \
        --eval wikitext2 --eval-seqlen 1024 --eval-windows 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from setup_args import add_model_and_data

from automl_prune.data import calibration_windows, evaluation_windows
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.models.loading import load_model
from automl_prune.provenance import environment
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import plan_for_method

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_data(ap)
    ap.add_argument("--methods", default="magnitude,wanda,ria,stade,bawa,sparsegpt")
    ap.add_argument("--targets", default="0.5,2:4", help="comma-separated sparsities and N:M patterns")
    ap.add_argument("--modes", default="one-shot,sequential")
    ap.add_argument("--out", default=str(RESULTS / "quality_smollm2"))
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows already recorded in OUT.json (same model and windows) and compute only the missing ones")
    args = ap.parse_args()

    loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    model, tok = loaded.model, loaded.tokenizer
    calib = calibration_windows(args.calib, tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, data_dir=args.data_dir)
    evalw = evaluation_windows(args.eval, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows, data_dir=args.data_dir)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    previous = load_previous(Path(args.out + ".json"), loaded.info, calib.info, evalw.info) if args.resume else None
    if previous is not None:
        report = previous
        print(f"resuming {args.out}.json: {len(report['rows'])} rows already recorded", flush=True)
    else:
        dense = perplexity(model, evalw.input_ids, desc="dense")
        report = dict(model=loaded.info, calibration=calib.info, evaluation=evalw.info, dense=dense, rows=[], environment=environment("cpu"))
    done = {(r["method"], r["target"], r["mode"]) for r in report["rows"]}

    def write() -> None:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps(report, indent=2, default=str))
        Path(args.out + ".md").write_text(markdown(report, args))

    for target in args.targets.split(","):
        nm = ":" in target
        for mode in args.modes.split(","):
            for method in args.methods.split(","):
                if method == "magnitude" and mode == "sequential":
                    continue  # magnitude uses no activations: sequential is the same masks
                if (method, target, mode) in done:
                    continue
                plan = plan_for_method(method, sparsity=None if nm else float(target), pattern=target if nm else "unstructured", mode=mode)
                model.load_state_dict(dense_state)
                t = time.perf_counter()
                result = prune_model(model, plan, calib.input_ids, cache_dir=args.cache_dir, windows_info=calib.info)
                seconds = time.perf_counter() - t
                ppl = perplexity(model, evalw.input_ids, desc=f"{method} {target} {mode}")
                report["rows"].append(dict(method=method, target=target, mode=mode, ppl=ppl["ppl"], prune_seconds=round(seconds, 2),
                                           realised_sparsity=round(result.realised_sparsity, 6),
                                           stats_cache=(result.info.get("calibration") or {}).get("cache")))
                print(f"{method:10s} {target:5s} {mode:10s} ppl {ppl['ppl']:10.3f}  prune {seconds:6.1f} s", flush=True)
                write()
    write()


def _fingerprint(model_info: dict, calib_info: dict, eval_info: dict) -> dict:
    return dict(model=model_info.get("gguf_sha256") or model_info.get("path") or model_info.get("spec"),
                calibration=calib_info.get("windows_sha256"), evaluation=eval_info.get("windows_sha256"))


def load_previous(path: Path, model_info: dict, calib_info: dict, eval_info: dict) -> dict | None:
    """The report already at ``path`` if it was written for the same model and windows; None if there is none."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    old = _fingerprint(report.get("model") or {}, report.get("calibration") or {}, report.get("evaluation") or {})
    new = _fingerprint(model_info, calib_info, eval_info)
    if old != new:
        raise SystemExit(f"--resume: {path} was written with different settings ({old} != {new}); "
                         "use another --out or drop --resume")
    return report


def markdown(report: dict, args) -> str:
    lines = [f"SmolLM2-135M ({args.model}), calibration {args.calib} {args.nsamples} x {args.seqlen} seed {args.seed}; "
             f"held-out {args.eval} perplexity at seqlen {args.eval_seqlen}, first {args.eval_windows} windows. "
             f"Dense: {report['dense']['ppl']:.3f}.", "",
             "| method | target | mode | perplexity | realised sparsity | prune wall time (s) |", "|---|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        note = " (stats cached)" if r.get("stats_cache") == "hit" else ""
        lines.append(f"| {r['method']} | {r['target']} | {r['mode']} | {r['ppl']:.3f} | {r['realised_sparsity']:.4f} | {r['prune_seconds']}{note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
