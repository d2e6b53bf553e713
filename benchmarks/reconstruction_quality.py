"""Weight reconstruction and mask refinement on a real model: Wanda vs Wanda + DSnoT / SparseGPT /
ADMM updates, SparseGPT, ADMM with gradual masks, the searched plans with and without ADMM, and
RIA with channel permutation at 2:4; held-out perplexity and prune wall time per row.

One-shot (dense statistics, computed once with the Gram matrix and shared by every row; their
capture time is reported separately). Rows are written as they finish (JSON + markdown under
benchmarks/results/); ``--resume`` keeps finished rows.

    python benchmarks/reconstruction_quality.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from setup_args import add_model_and_data, previous_report

import yaml

from automl_prune.allocation.profile import ModelProfile
from automl_prune.calibration.dense import dense_statistics
from automl_prune.data import calibration_windows, evaluation_windows
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.models.loading import load_model
from automl_prune.provenance import environment
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import plan_for_method
from automl_prune.pruning.plan import PruningPlan
from search_spaces import make_space

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: row label -> (method, plan-field overrides); "searched" rows come from plans/searched.yaml
ROWS: dict[str, tuple[str, dict]] = {
    "wanda": ("wanda", {}),
    "wanda + DSnoT": ("wanda", {"refine": "dsnot"}),
    "wanda + SparseGPT update": ("wanda", {"update": "sparsegpt"}),
    "wanda + ADMM update": ("wanda", {"update": "admm"}),
    "ADMM, gradual masks (Boza reference)": ("admm", {}),
    "SparseGPT": ("sparsegpt", {}),
    "searched": ("searched", {}),
    "searched + ADMM update": ("searched", {"update": "admm"}),
}
NM_ROWS: dict[str, tuple[str, dict]] = {
    "ria": ("ria", {}),
    "ria + channel permutation": ("ria", {"permute": "heuristic"}),
    "wanda + channel permutation": ("wanda", {"permute": "heuristic"}),
}


def plan_of(method: str, target: str, overrides: dict, searched: dict, profile: ModelProfile) -> PruningPlan:
    nm = ":" in target
    if method == "searched":
        space = make_space(searched[target]["space"])
        plan = space.bind(profile).decode({}, profile)
    else:
        plan = plan_for_method(method, sparsity=None if nm else float(target), pattern=target if nm else "unstructured")
    return plan.with_fields(**overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_data(ap)
    ap.add_argument("--targets", default="0.5,0.7,2:4")
    ap.add_argument("--rows", default=None, help="comma-separated row labels (default: all)")
    ap.add_argument("--searched", default=str(HERE / "plans" / "searched.yaml"))
    ap.add_argument("--out", default=str(RESULTS / "reconstruction_smollm2"))
    ap.add_argument("--resume", action="store_true", help="keep the rows already in OUT.json")
    args = ap.parse_args()

    searched = yaml.safe_load(Path(args.searched).read_text())
    loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    model, tok = loaded.model, loaded.tokenizer
    calib = calibration_windows(args.calib, tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, data_dir=args.data_dir)
    evalw = evaluation_windows(args.eval, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows, data_dir=args.data_dir)
    t = time.perf_counter()
    computed = dense_statistics(model, calib.input_ids, with_gram=True, cache_dir=args.cache_dir, windows_info=calib.info)
    capture_s = time.perf_counter() - t
    profile = ModelProfile.build(model, computed.stats, with_alphas=False)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}

    out = Path(args.out)
    fresh = dict(model=loaded.info, calibration=calib.info, evaluation=evalw.info)
    old = previous_report(out.with_suffix(".json"), fresh) if args.resume else None
    report = old or dict(model=loaded.info, calibration=calib.info, evaluation=evalw.info, mode="one-shot",
                         statistics=dict(computed.info, seconds=round(capture_s, 1)),
                         dense=perplexity(model, evalw.input_ids, desc="dense"), rows=[], environment=environment("cpu"))
    done = {(r["row"], r["target"]) for r in report["rows"]}
    wanted = None if args.rows is None else set(args.rows.split(","))

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        out.with_suffix(".md").write_text(markdown(report, searched))

    for target in args.targets.split(","):
        rows = {**ROWS, **(NM_ROWS if ":" in target else {})}
        for label, (method, overrides) in rows.items():
            if (label, target) in done or (wanted is not None and label not in wanted):
                continue
            if method == "searched" and target not in searched:
                continue
            plan = plan_of(method, target, overrides, searched, profile)
            model.load_state_dict(dense_state)
            t = time.perf_counter()
            result = prune_model(model, plan, stats=computed.stats, progress=False)
            seconds = time.perf_counter() - t
            ppl = perplexity(model, evalw.input_ids, desc=f"{label} {target}")["ppl"]
            report["rows"].append(dict(row=label, target=target, ppl=ppl, prune_seconds=round(seconds, 2),
                                       realised_sparsity=round(result.realised_sparsity, 6), plan=plan.to_dict(),
                                       permuted=bool(result.permutations)))
            print(f"{label:40s} {target:4s} ppl {ppl:10.3f}  prune {seconds:6.1f} s", flush=True)
            write()
    write()


def statistics_text(info: dict) -> str:
    if info.get("cache") == "hit":
        return f"read from the statistics cache in {info['seconds']} s"
    return f"captured in {info['seconds']} s"


def markdown(report: dict, searched: dict) -> str:
    cal, ev = report["calibration"], report["evaluation"]
    lines = [f"{report['model'].get('spec', 'model')}: calibration {cal.get('source')} {cal.get('nsamples')} x {cal.get('seqlen')} "
             f"seed {cal.get('seed')}, one-shot; held-out {ev.get('source')} perplexity at seqlen {ev.get('seqlen')}, "
             f"{ev.get('n_windows')} windows; dense {report['dense']['ppl']:.3f}. Statistics with the Gram matrix computed "
             f"once ({statistics_text(report['statistics'])}) and shared by every row; prune times exclude them.", "",
             "| target | method | held-out ppl | realised sparsity | prune wall time (s) |", "|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        note = " (N:M in permuted channel order)" if r.get("permuted") else ""
        name = r["row"].replace("searched", searched.get(r["target"], {}).get("label", "searched"), 1)
        lines.append(f"| {r['target']} | {name}{note} | {r['ppl']:.3f} | {r['realised_sparsity']:.4f} | {r['prune_seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
