"""Does a polishing objective pick the plan that is best held out? A diagnostic, not a selection.

Takes a search folder whose config polishes a sparsity front (``polish:``) and one target sparsity,
evaluates every completed candidate of that point's polishing study on the held-out windows of the
search's config, and reports the Spearman rank correlation between the polishing objective and
held-out perplexity, the candidates that beat uniform Wanda held out, and where the objective's
best sits among them. Writes ``polish_fidelity_<s>.json`` and ``.md`` into ``--results-dir``.

    python benchmarks/polish_fidelity.py --run runs/sparsity-front --point 0.3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from automl_prune.pruning.plan import PruningPlan
from automl_prune.search.config import load_config
from automl_prune.search.driver import storage_url
from automl_prune.search.final import HeldoutEvaluator
from automl_prune.search.polish import polish_study_name
from automl_prune.search.setup import build_context

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a search folder (config.yaml, study.db) with polishing")
    ap.add_argument("--point", type=float, required=True, help="the target sparsity whose candidates are evaluated")
    ap.add_argument("--data-dir", default=None, help="overrides the config's data_dir")
    ap.add_argument("--results-dir", default=str(HERE / "results"))
    args = ap.parse_args()
    run = Path(args.run)
    config = load_config(run / "config.yaml", {"data_dir": args.data_dir} if args.data_dir else None)
    if config.polish is None or args.point not in config.polish.points:
        raise SystemExit(f"{run / 'config.yaml'} does not polish sparsity {args.point:g}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=polish_study_name(config, args.point), storage=storage_url(config, run))
    trials = [t for t in study.get_trials(states=(TrialState.COMPLETE,)) if "plan" in t.user_attrs]
    ctx = build_context(config, progress=False)
    heldout = HeldoutEvaluator(ctx)  # the final comparison's evaluator: equal masks evaluated once
    rows = []
    for t in trials:
        ppl, realised, _ = heldout(PruningPlan.from_dict(t.user_attrs["plan"]))
        rows.append(dict(trial=t.number, start=t.user_attrs.get("named_point") or t.user_attrs.get("front_trial") or "tpe",
                         objective=t.value, ppl=ppl, sparsity=realised, params=t.params))
        print(f"trial {t.number:3d}  {rows[-1]['start']!s:18}  objective {t.value:.5f}  held-out ppl {ppl:.3f}", flush=True)
    ctx.restore()
    wanda = next((r for r in rows if r["start"] == "wanda"), None)
    best = min(rows, key=lambda r: r["objective"])
    rho = spearmanr([r["objective"] for r in rows], [r["ppl"] for r in rows]).statistic if len(rows) >= 3 else None
    beat = sorted((r for r in rows if wanda is not None and r["ppl"] < wanda["ppl"]), key=lambda r: r["ppl"])
    report = dict(run=str(run), point=args.point, objective=config.polish.objective.model_dump(mode="json"),
                  heldout=ctx.info["heldout"], n=len(rows), spearman=rho, wanda=wanda, objective_best=best,
                  beat_wanda=[r["trial"] for r in beat], rows=rows)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"polish_fidelity_{args.point:g}"  # "0.3": no with_suffix (it would take ".3" for a suffix)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    name = config.polish.objective.name
    lines = [f"Polishing study of {run} at sparsity {args.point:g}: {len(rows)} candidates, objective `{name}`, "
             f"held-out {ctx.info['heldout'].get('source')} {ctx.info['heldout'].get('n_windows')} x "
             f"{ctx.info['heldout'].get('seqlen')}. Spearman(objective, held-out ppl) = "
             + ("-" if rho is None else f"{rho:.2f}") + f"; {len(beat)} candidates beat uniform Wanda held out; "
             f"the objective's best is trial {best['trial']} (held-out {best['ppl']:.3f}"
             + (f", Wanda {wanda['ppl']:.3f}" if wanda else "") + ").", "",
             f"| trial | start | {name} | held-out ppl | sparsity |", "|---:|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["objective"]):
        lines.append(f"| {r['trial']} | {r['start']} | {r['objective']:.5f} | {r['ppl']:.3f} | {r['sparsity']:.4f} |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:1]))


if __name__ == "__main__":
    main()
