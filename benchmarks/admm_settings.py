"""ADMM settings at one sparsity: the reference's (Wanda's score over the whole matrix, gradual masks,
damping 0.1, 20 iterations) against per-row masks, other dampings and more iterations, scored by KL
to the dense model on fresh calibration-domain windows (drawn apart from the calibration and probe
windows, as a selection stage draws them). No held-out text is read: this is how a study config
chooses its update settings without selecting on its test set.

    python benchmarks/admm_settings.py --data-dir ../shared/data --sparsity 0.6

Rows already in the output file (same model, calibration, windows and sparsity) are kept, not measured again.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from setup_args import add_model_and_data

from automl_prune.calibration.dense import dense_statistics
from automl_prune.data import calibration_windows
from automl_prune.data.api import fresh_windows
from automl_prune.evaluation.kl import kl_to_dense
from automl_prune.models.adapters import model_linears
from automl_prune.models.loading import load_model
from automl_prune.provenance import environment
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import plan_for_method

HERE = Path(__file__).resolve().parent

JOINT_50_METRIC = {"name": "bawa", "form": "product", "alpha": -0.8902382893847618, "beta": 0.36357223968476005,
                   "gamma": 0.9256089293745574, "norm": "l2", "activation": "l2"}

#: row label -> (comparison group, ADMM options over the reference's[, metric instead of Wanda's])
ROWS: dict[str, tuple] = {
    "reference (--method admm)": ("matrix", {}),
    "damping 0.03": ("matrix", {"damping": 0.03}),
    "50 iterations (40 gradual)": ("matrix", {"iterations": 50, "gradual_iterations": 40}),
    "per row": ("row", {}),
    "per row, damping 0.03": ("row", {"damping": 0.03}),
    "per row, damping 0.01": ("row", {"damping": 0.01}),
    "per row, damping 0.03, 50 iterations (40 gradual)": ("row", {"damping": 0.03, "iterations": 50, "gradual_iterations": 40}),
    # the metric the joint 50% study's first phase selected on fresh tokens (configs/joint-50-update.yaml)
    "per row, damping 0.03, BaWA product (alpha -0.89, beta 0.36, gamma 0.93)": ("row", {"damping": 0.03}, JOINT_50_METRIC),
    # gradual masks by the OBS saliency w'^2 / [G'^-1]_jj instead of |w'| (admm.gradual_score: obs)
    "per row, damping 0.03, OBS gradual score": ("row", {"damping": 0.03, "gradual_score": "obs"}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_data(ap, evaluation=False)
    ap.add_argument("--sparsity", type=float, default=0.6)
    ap.add_argument("--probe", default="8,512,1", help="the probe windows to stay apart from: nsamples,seqlen,seed")
    ap.add_argument("--windows", type=int, default=16, help="fresh windows of --seqlen tokens for the KL")
    ap.add_argument("--windows-seed", type=int, default=4242)
    ap.add_argument("--rows", default=None, help="row labels separated by ';' (default: all)")
    ap.add_argument("--out", default=None, help="default benchmarks/results/admm_settings_<percent>")
    args = ap.parse_args()

    loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
    model, tok = loaded.model, loaded.tokenizer
    calib = calibration_windows(args.calib, tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed, data_dir=args.data_dir)
    pn, pl, ps = (int(x) for x in args.probe.split(","))
    avoid = [dict(nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed), dict(nsamples=pn, seqlen=pl, seed=ps)]
    fresh = fresh_windows(args.calib, tok, nsamples=args.windows, seqlen=args.seqlen, seed=args.windows_seed, avoid=avoid,
                          data_dir=args.data_dir)
    stats = dense_statistics(model, calib.input_ids, with_gram=True, cache_dir=args.cache_dir, windows_info=calib.info).stats
    modules = model_linears(model)
    dense = {n: m.weight.data.clone() for n, m in modules.items()}

    out = Path(args.out or HERE / "results" / f"admm_settings_{round(100 * args.sparsity)}")
    report = dict(model=loaded.info, calibration=calib.info, kl_windows=fresh.info, sparsity=args.sparsity, mode="one-shot",
                  rows=[], environment=environment("cpu"))
    wanted = None if args.rows is None else {r.strip() for r in args.rows.split(";")}
    if wanted is not None and wanted - set(ROWS):
        raise SystemExit(f"--rows: unknown {sorted(wanted - set(ROWS))}; the rows are {list(ROWS)}")
    done = measured_rows(out, report)
    for label, (group, admm, *metric) in ROWS.items():
        if wanted is not None and label not in wanted:
            continue
        if label in done:  # measured by an earlier run on the same model, windows and sparsity: kept, not rerun
            report["rows"].append(done[label])
            continue
        for n, m in modules.items():
            m.weight.data.copy_(dense[n])
        plan = plan_for_method("admm", sparsity=args.sparsity)
        plan = plan.with_fields(group=group, admm=plan.admm.model_dump() | admm, **({"metric": metric[0]} if metric else {}))
        t = time.perf_counter()
        result = prune_model(model, plan, stats=stats, progress=False)
        seconds = time.perf_counter() - t
        kl = kl_to_dense(model, modules, dense, fresh.input_ids, progress=False)
        report["rows"].append(dict(row=label, group=group, metric=plan.metric.model_dump(), admm=plan.admm.model_dump(), kl=round(kl["kl"], 5),
                                   kl_tokens=kl["n_tokens"], realised_sparsity=round(result.realised_sparsity, 6),
                                   prune_seconds=round(seconds, 1)))
        print(f"{label:32s} KL {kl['kl']:.4f}  realised {result.realised_sparsity:.4f}  prune {seconds:5.1f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        out.with_suffix(".md").write_text(markdown(report))


def measured_rows(out: Path, report: dict) -> dict[str, dict]:
    """Rows an earlier run wrote to ``out`` with the same model, calibration, KL windows and sparsity."""
    path = out.with_suffix(".json")
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = all(json.dumps(_identity(old.get(k)), default=str) == json.dumps(_identity(report[k]), default=str)
               for k in ("model", "calibration", "kl_windows", "sparsity"))
    return {r["row"]: r for r in old.get("rows", [])} if same else {}


def _identity(info):
    """An info record without what changes from one run to the next (load time, cache hits)."""
    return {k: v for k, v in info.items() if k not in VOLATILE} if isinstance(info, dict) else info


VOLATILE = ("load_seconds", "cache_hit", "seconds", "capture_seconds")


def markdown(report: dict) -> str:
    cal, kw = report["calibration"], report["kl_windows"]
    ref = report["rows"][0]["kl"] if report["rows"] else None
    lines = [f"{report['model'].get('spec', 'model')} at {report['sparsity']:.0%}, one-shot: calibration {cal.get('source')} "
             f"{cal.get('nsamples')} x {cal.get('seqlen')} seed {cal.get('seed')}; KL(dense || pruned) on {kw.get('nsamples')} "
             f"fresh {kw.get('source')} windows of {kw.get('seqlen')} tokens (seed {kw.get('seed')}, apart from the "
             "calibration and probe windows); no held-out text read. Per-row masks round each row down (Wanda's "
             "count), so they prune slightly fewer weights than the per-matrix rows.", "",
             "| ADMM settings | KL | vs first row | realised sparsity | prune wall time (s) |", "|---|---:|---:|---:|---:|"]
    for r in report["rows"]:
        rel = f"{100 * (r['kl'] / ref - 1):+.1f}%" if ref else ""
        lines.append(f"| {r['row']} | {r['kl']:.4f} | {rel} | {r['realised_sparsity']:.4f} | {r['prune_seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
