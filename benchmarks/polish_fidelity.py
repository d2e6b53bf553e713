"""Does a polishing objective pick the plan that is best held out? A diagnostic, not a selection.

Takes a search folder whose config polishes a sparsity front (``polish:``) and one target sparsity,
evaluates every completed candidate of that point's polishing study on the held-out windows of the
search's config, and reports the Spearman rank correlation between the polishing objective and
held-out perplexity, the candidates that beat uniform Wanda held out, and where the objective's
best sits among them. Writes ``polish_fidelity_<s>.json`` and ``.md`` into ``--results-dir``.

``--rescore-windows N`` also scores every candidate with the polishing objective on the first N
probe windows (the probe sample grown to N when smaller): would more probe tokens have picked
better? Held-out figures already in the results file for the same held-out windows are reused.

    python benchmarks/polish_fidelity.py --run runs/sparsity-front --point 0.3 --rescore-windows 32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from automl_prune.pruning.plan import PruningPlan
from automl_prune.search.execution.candidate import score_candidate
from automl_prune.search.study.config import load_config, on_windows
from automl_prune.search.phases.final import HeldoutEvaluator
from automl_prune.search.phases.polish import point_config
from automl_prune.search.execution.setup import build_context
from automl_prune.search.study.definition import Study

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a search folder (config.yaml, study.db) with polishing")
    ap.add_argument("--point", type=float, required=True, help="the target sparsity whose candidates are evaluated")
    ap.add_argument("--data-dir", default=None, help="overrides the config's data_dir")
    ap.add_argument("--rescore-windows", type=int, default=None,
                    help="also score every candidate with the polishing objective on this many probe windows")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    run = Path(args.run)
    config = load_config(run / "config.yaml", {"data_dir": args.data_dir} if args.data_dir else None)
    if config.polish is None or args.point not in config.polish.points:
        raise SystemExit(f"{run / 'config.yaml'} does not polish sparsity {args.point:g}")
    if args.rescore_windows is not None and args.rescore_windows < 1:
        raise SystemExit("--rescore-windows must be a positive integer")
    out = Path(args.results_dir)
    stem = f"polish_fidelity_{args.point:g}"  # "0.3": no with_suffix (it would take ".3" for a suffix)
    probe_config = config
    if args.rescore_windows is not None and args.rescore_windows > config.probe.nsamples:
        # the probe sampler draws windows in sequence: the first nsamples of a larger sample are the same
        probe_config = config.model_copy(update={"probe": config.probe.model_copy(update={"nsamples": args.rescore_windows})})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = Study.from_config(point_config(config, args.point), run).load()
    trials = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    ctx = build_context(probe_config, progress=False)
    known = previous_heldout(out / f"{stem}.json", ctx.info["heldout"])
    heldout = HeldoutEvaluator(ctx)  # the final comparison's evaluator: equal masks evaluated once
    rescore = None
    if args.rescore_windows is not None:
        from objectives import make_objective

        spec = on_windows(config.polish.objective, args.rescore_windows)
        rescore = make_objective(spec.name, **spec.params)
        rescore.prepare(ctx)
    rows = []
    for t in trials:
        plan = PruningPlan.from_dict(t.user_attrs["plan"])
        if t.number in known:
            ppl, realised = known[t.number]["ppl"], known[t.number]["sparsity"]
        else:
            ppl, realised, _ = heldout(plan)
        row = dict(trial=t.number, start=t.user_attrs.get("named_point") or t.user_attrs.get("front_trial") or "tpe",
                   objective=t.value, ppl=ppl, sparsity=realised, params=t.params)
        if rescore is not None:
            row["rescored"] = score_candidate(ctx, plan, [rescore]).values[0]
        rows.append(row)
        print(f"trial {t.number:3d}  {row['start']!s:18}  objective {t.value:.5f}  held-out ppl {ppl:.3f}"
              + (f"  rescored {row['rescored']:.5f}" if rescore is not None else ""), flush=True)
    ctx.restore()
    wanda = next((r for r in rows if r["start"] == "wanda"), None)
    beat = sorted((r for r in rows if wanda is not None and r["ppl"] < wanda["ppl"]), key=lambda r: r["ppl"])
    name = config.polish.objective.name
    read = config.polish.objective.params.get("windows") or config.probe.nsamples
    scores = {"objective": f"`{name}` ({read} probe windows)"}
    if rescore is not None:
        scores["rescored"] = f"`{name}` on {args.rescore_windows} probe windows"
    summary = {key: dict(label=label, spearman=spearman(rows, key), best=min(rows, key=lambda r: r[key]))
               for key, label in scores.items()}
    report = dict(run=str(run), point=args.point, objective=config.polish.objective.model_dump(mode="json"),
                  rescore_windows=args.rescore_windows, heldout=ctx.info["heldout"], n=len(rows),
                  spearman=summary["objective"]["spearman"], wanda=wanda, objective_best=summary["objective"]["best"],
                  scores=summary, beat_wanda=[r["trial"] for r in beat], rows=rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    h = ctx.info["heldout"]
    lines = [f"Polishing study of {run} at sparsity {args.point:g}: {len(rows)} candidates, held-out "
             f"{h.get('source')} {h.get('n_windows')} x {h.get('seqlen')}; {len(beat)} candidates beat uniform Wanda "
             f"held out" + (f" ({wanda['ppl']:.3f})" if wanda else "") + ".", ""]
    for s in summary.values():
        rho = "-" if s["spearman"] is None else f"{s['spearman']:.2f}"
        lines.append(f"- {s['label']}: Spearman with held-out perplexity {rho}; its best is trial {s['best']['trial']} "
                     f"(held-out {s['best']['ppl']:.3f}).")
    extra = " rescored |" if rescore is not None else ""
    lines += ["", f"| trial | start | {name} |{extra} held-out ppl | sparsity |",
              "|---:|---|---:|" + ("---:|" if rescore is not None else "") + "---:|---:|"]
    for r in sorted(rows, key=lambda r: r["objective"]):
        cell = f" {r['rescored']:.5f} |" if rescore is not None else ""
        lines.append(f"| {r['trial']} | {r['start']} | {r['objective']:.5f} |{cell} {r['ppl']:.3f} | {r['sparsity']:.4f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:4]))


def spearman(rows: list[dict], key: str) -> float | None:
    if len(rows) < 3:
        return None
    return float(spearmanr([r[key] for r in rows], [r["ppl"] for r in rows]).statistic)


def previous_heldout(path: Path, heldout: dict) -> dict[int, dict]:
    """Held-out figures of an earlier run of this script on the same held-out windows, by trial."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if report.get("heldout") != json.loads(json.dumps(heldout, default=str)):
        return {}
    return {r["trial"]: r for r in report.get("rows", [])}

if __name__ == "__main__":
    main()
