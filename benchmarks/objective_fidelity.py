"""Fidelity of the fast objectives: Spearman rank correlation with held-out perplexity, and cost.

For each target (50% unstructured, 2:4) a fixed set of diverse plans is built: the named methods
(magnitude, Wanda, RIA, STADE, BaWA defaults) plus plans sampled with a fixed seed from the
generic metric space (BaWA family and OptiShear meta-metrics). Plans with identical masks are
kept once. Every plan is applied once (one-shot, from the dense statistics) and scored by every
objective variant and by held-out perplexity; the cost of an objective is its seconds per
candidate over the seconds of one held-out perplexity evaluation (same run, same machine).

Rows are written after every plan (JSON and markdown under benchmarks/results/), so an
interrupted run keeps what it measured; ``--resume`` continues it (same protocol and objective
variants; plans already measured are kept, only the missing ones are run, e.g. after raising
``--random``).

    python benchmarks/objective_fidelity.py --data-dir ../shared/data
    python benchmarks/objective_fidelity.py --data-dir ../shared/data --heldout-windows 8 --random 7 --resume
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import optuna
from scipy.stats import spearmanr

from automl_prune.evaluation.perplexity import perplexity
from automl_prune.provenance import environment
from automl_prune.pruning.methods import plan_for_method
from automl_prune.search.execution.candidate import mask_hash
from automl_prune.data.settings import Calibration, Heldout
from automl_prune.search.study.config import ProbeConfig, StudyConfig
from automl_prune.search.execution.setup import build_context
from objectives import make_objective
from objectives import probe as P
from search_spaces import make_space, suggest

RESULTS = Path(__file__).resolve().parent / "results"
NAMED = ("magnitude", "wanda", "ria", "stade", "bawa")

#: objective variants measured: (label, name, params)
VARIANTS = [
    ("layer_recon uniform", "layer_recon", {"weighting": "uniform"}),
    ("layer_recon energy", "layer_recon", {"weighting": "energy"}),
    ("layer_recon fisher", "layer_recon", {"weighting": "fisher"}),
    ("layer_recon fisher_layer", "layer_recon", {"weighting": "fisher_layer"}),
    ("layer_recon fisher sketch 128", "layer_recon", {"weighting": "fisher", "sketch": 128}),
    ("model_recon logits_fro", "model_recon", {"form": "logits_fro", "early_stop": False}),
    ("model_recon final_rel", "model_recon", {"form": "final_rel", "early_stop": False}),
    ("model_recon hidden_cos", "model_recon", {"form": "hidden_cos", "early_stop": False}),
    ("kl", "kl", {}),
    ("calib_ppl", "calib_ppl", {}),
    ("kl 2 windows", "kl", {"windows": 2}),
]
#: objectives that read the shared forward over all probe windows: their cost includes that forward
SHARED_PROBE = {"model_recon logits_fro", "model_recon final_rel", "model_recon hidden_cos", "kl", "calib_ppl"}


def target_space(target: str):
    pattern = {"name": "nm", "pattern": target} if ":" in target else {"name": "unstructured", "sparsity": float(target)}
    return make_space({"metric": {"name": "generic"}, "allocation": {"name": "uniform"}, "pattern": pattern})


def plan_set(target: str, n_random: int, seed: int) -> list[tuple[str, object]]:
    """Named methods, then plans sampled from the generic space (fixed seed)."""
    sparsity, pattern = (None, target) if ":" in target else (float(target), "unstructured")
    plans = [(m, plan_for_method(m, sparsity=sparsity, pattern=pattern)) for m in NAMED]
    space = target_space(target)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for i in range(n_random):
        params = suggest(space, study.ask())
        plans.append((f"sample {i}: " + space.canonical_key(params), space.decode(params)))
    return plans


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None
    rho = spearmanr(xs, ys).statistic
    return None if np.isnan(rho) else float(rho)


#: the competitive subset: plans within this factor of the best held-out perplexity
COMPETITIVE = 2.0


def summarise(rows: list[dict], labels: list[str]) -> dict:
    """Spearman over all plans and over the competitive ones (the ones a search must tell apart)."""
    ppl = [r["ppl"] for r in rows]
    close = [i for i, p in enumerate(ppl) if p <= COMPETITIVE * min(ppl)] if rows else []
    ppl_s = float(np.median([r["ppl_seconds"] for r in rows])) if rows else None
    apply_s = float(np.median([r["apply_seconds"] for r in rows])) if rows else None
    out = {}
    for label in labels:
        vals = [r["objectives"][label]["value"] for r in rows]
        secs = float(np.median([r["objectives"][label]["seconds"] for r in rows])) if rows else None
        out[label] = dict(spearman=spearman(vals, ppl), seconds=secs,
                          spearman_competitive=spearman([vals[i] for i in close], [ppl[i] for i in close]),
                          cost_vs_ppl=None if not ppl_s else secs / ppl_s)
    return dict(n_plans=len(rows), n_competitive=len(close), ppl_seconds=ppl_s, apply_seconds=apply_s, objectives=out)


def write(result: dict, stem: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2, default=str))
    p = result["protocol"]
    lines = [f"Model {p['model']}; calibration {p['calibration']}; probe {p['probe']}; held-out {p['heldout']}; "
             f"one-shot masks from the dense statistics. Cost = objective seconds per candidate / seconds of one "
             f"held-out perplexity evaluation (medians, same run).", ""]
    targets = list(result["targets"])
    header = "| objective | " + " | ".join(f"Spearman {t} (all / competitive) | cost {t}" for t in targets) + " |"
    lines += [header, "|---|" + "---:|---:|" * len(targets)]
    labels = [v[0] for v in VARIANTS]
    for label in labels:
        cells = []
        for t in targets:
            s = result["targets"][t]["summary"]["objectives"].get(label, {})
            rho, close, cost = s.get("spearman"), s.get("spearman_competitive"), s.get("cost_vs_ppl")
            cells += [("-" if rho is None else f"{rho:.3f}") + " / " + ("-" if close is None else f"{close:.3f}"),
                      "-" if cost is None else f"{cost:.3f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Competitive: the plans within {COMPETITIVE:g}x of the best held-out perplexity of their target. "
                 "Plans per target: " + ", ".join(f"{t}: {result['targets'][t]['summary']['n_plans']} distinct masks, "
                                                  f"{result['targets'][t]['summary'].get('n_competitive')} competitive "
                                                  f"(held-out ppl {min(r['ppl'] for r in result['targets'][t]['rows']):.2f}"
                                                  f" to {max(r['ppl'] for r in result['targets'][t]['rows']):.2f}; one "
                                                  f"evaluation {result['targets'][t]['summary']['ppl_seconds']:.1f} s)"
                                                  for t in targets if result["targets"][t]["rows"]) + ".")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")


def resumable(stem: str, protocol: dict, labels: list[str]) -> dict:
    """The targets of an earlier run with the same protocol and objective variants (else an error)."""
    path = RESULTS / f"{stem}.json"
    if not path.exists():
        return {}
    old = json.loads(path.read_text())
    same = {k: v for k, v in protocol.items() if k != "plans"} == {k: v for k, v in old["protocol"].items() if k != "plans"}
    rows = [r for t in old["targets"].values() for r in t["rows"]]
    if not same or any(set(r["objectives"]) != set(labels) for r in rows):
        raise SystemExit(f"--resume: {path} was measured with another protocol or other objective variants; "
                         "run without --resume (or with another --stem)")
    return old["targets"]


def main() -> None:
    global RESULTS  # --results-dir
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--calib", default="c4")
    ap.add_argument("--nsamples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--probe-nsamples", type=int, default=8)
    ap.add_argument("--heldout", default="wikitext2")
    ap.add_argument("--heldout-seqlen", type=int, default=1024)
    ap.add_argument("--heldout-windows", type=int, default=16)
    ap.add_argument("--targets", default="0.5,2:4")
    ap.add_argument("--random", type=int, default=11, help="sampled plans per target (besides the 5 named)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default=None, help="comma-separated objective labels to measure (default: all)")
    ap.add_argument("--stem", default="objective_fidelity")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where STEM.json and STEM.md go")
    ap.add_argument("--render", action="store_true", help="only rewrite the summaries and the table from the JSON")
    ap.add_argument("--resume", action="store_true",
                    help="keep the plans already measured in the JSON (same protocol) and run only the missing ones")
    args = ap.parse_args()
    RESULTS = Path(args.results_dir)
    if args.render:
        result = json.loads((RESULTS / f"{args.stem}.json").read_text())
        labels = [v[0] for v in VARIANTS]
        for t in result["targets"].values():
            t["summary"] = summarise(t["rows"], [lb for lb in labels if t["rows"] and lb in t["rows"][0]["objectives"]])
        write(result, args.stem)
        print((RESULTS / f"{args.stem}.md").read_text())
        return

    variants = [v for v in VARIANTS if args.only is None or v[0] in args.only.split(",")]
    config = StudyConfig(model=args.model, data_dir=args.data_dir,
                         calibration=Calibration(source=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=0),
                         probe=ProbeConfig(nsamples=args.probe_nsamples, seqlen=args.seqlen, seed=1),
                         heldout=Heldout(source=args.heldout, seqlen=args.heldout_seqlen, windows=args.heldout_windows))
    ctx = build_context(config)
    objectives = []
    for label, name, params in variants:
        obj = make_objective(name, **params)
        start = time.perf_counter()
        obj.prepare(ctx)
        objectives.append((label, obj, time.perf_counter() - start))
    protocol = dict(model=args.model, calibration=f"{args.calib} {args.nsamples} x {args.seqlen} seed 0",
                    probe=f"{args.calib} {args.probe_nsamples} x {args.seqlen} seed 1",
                    heldout=f"{args.heldout} seqlen {args.heldout_seqlen}, first {args.heldout_windows} windows",
                    plans=f"5 named + {args.random} sampled from the generic space (seed {args.seed})", mode="one-shot")
    result = dict(protocol=protocol, environment=environment(ctx.device), context=ctx.info,
                  prepare_seconds={label: round(s, 3) for label, _, s in objectives}, targets={})
    labels = [label for label, _, _ in objectives]
    previous = resumable(args.stem, protocol, labels) if args.resume else {}
    for target in args.targets.split(","):
        done = {r["name"]: r for r in previous.get(target, {}).get("rows", [])}
        rows: list[dict] = []
        seen: set[str] = set()
        result["targets"][target] = dict(rows=rows, summary=summarise(rows, labels))
        for name, plan in plan_set(target, args.random, args.seed):
            start = time.perf_counter()
            pruned = ctx.apply(plan)
            apply_s = time.perf_counter() - start
            digest = mask_hash(ctx, plan)
            if name in done:
                seen.add(digest)
                rows.append(done[name])
                print(f"[{target}] {name[:60]}: kept from the earlier run", flush=True)
                continue
            if digest in seen:
                print(f"[{target}] {name}: same masks as an earlier plan, skipped", flush=True)
                continue
            seen.add(digest)
            row = dict(name=name, plan=plan.to_dict(), realised_sparsity=pruned.realised_sparsity,
                       apply_seconds=round(apply_s, 3), objectives={})
            probe_s = 0.0
            if any(label in SHARED_PROBE for label, _, _ in objectives):
                start = time.perf_counter()  # the one forward the probe objectives share
                P.run(ctx, pruned, None, None, need_blocks=True)
                probe_s = time.perf_counter() - start
            row["probe_forward_seconds"] = round(probe_s, 3)
            for label, obj, _ in objectives:
                start = time.perf_counter()
                value = float(obj(ctx, pruned))
                own = time.perf_counter() - start
                row["objectives"][label] = dict(value=value, seconds=round(own + (probe_s if label in SHARED_PROBE else 0.0), 3))
            start = time.perf_counter()
            row["ppl"] = perplexity(ctx.model, ctx.heldout_ids, device=ctx.device, progress=False)["ppl"]
            row["ppl_seconds"] = round(time.perf_counter() - start, 3)
            rows.append(row)
            result["targets"][target]["summary"] = summarise(rows, labels)
            write(result, args.stem)
            print(f"[{target}] {name[:60]}: ppl {row['ppl']:.3f}", flush=True)
    ctx.restore()
    print((RESULTS / f"{args.stem}.md").read_text())


if __name__ == "__main__":
    main()
