"""Local executor vs Ray: trials per minute and the per-trial overhead Ray adds (same run, same
machine, same study config and seed; each setting in its own fresh study).

Settings: ``local`` (this process, all threads), ``ray x1`` (one Ray worker with every CPU),
``ray x2`` (two workers with half the CPUs each). Random search over the config's space (fixed
seed) so the settings evaluate the same candidates; no held-out comparison. Figures:

- steady trials/min: from the first to the last trial completion in the study (what a long search
  sees once workers are loaded);
- end to end: the whole ``run_search`` call including Ray start and worker loading;
- overhead per trial: ray x1's steady seconds per trial minus local's.

    python benchmarks/executor_throughput.py --trials 24
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import optuna
from optuna.trial import TrialState

from automl_prune.provenance import environment
from automl_prune.search.study.config import load_config, preset
from automl_prune.search.run import run_search

RESULTS = Path(__file__).resolve().parent / "results"


def steady(out: Path) -> tuple[float, int]:
    """Seconds per trial between the first and the last completion, and the number of trials."""
    study = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{out / 'study.db'}")
    ends = sorted(t.datetime_complete for t in study.get_trials() if t.state == TrialState.COMPLETE)
    if len(ends) < 2:
        return float("nan"), len(ends)
    return (ends[-1] - ends[0]).total_seconds() / (len(ends) - 1), len(ends)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(preset("quickstart")))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--settings", default="local,ray x1,ray x2")
    ap.add_argument("--stem", default="executor_throughput")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where STEM.json and STEM.md go")
    args = ap.parse_args()
    results = Path(args.results_dir)

    cpus = os.cpu_count() or 1
    base = {"searcher": {"name": "random", "seed": 0}, "budget.trials": args.trials, "budget.timeout": None,
            "final.top": 0, "final.fidelity_sample": 0}
    if args.data_dir:
        base["data_dir"] = args.data_dir
    settings = {
        "local": {"executor": "local"},
        "ray x1": {"executor": "ray", "ray.max_concurrent_trials": 1, "ray.cpus_per_trial": cpus},
        "ray x2": {"executor": "ray", "ray.max_concurrent_trials": 2, "ray.cpus_per_trial": max(1, cpus // 2)},
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.settings.split(","):
            config = load_config(args.config, {**base, **settings[label]})
            out = Path(tmp) / label.replace(" ", "_")
            start = time.perf_counter()
            run_search(config, out, progress=False, final=False)
            total = time.perf_counter() - start
            per_trial, n = steady(out)
            meta = json.loads((out / "meta.json").read_text())
            rows.append(dict(setting=label, trials=n, steady_seconds_per_trial=round(per_trial, 3),
                             steady_trials_per_minute=round(60 / per_trial, 2), search_seconds=meta["search_seconds"],
                             end_to_end_seconds=round(total, 1)))
            print(rows[-1], flush=True)
    by = {r["setting"]: r for r in rows}
    overhead = None
    if "local" in by and "ray x1" in by:
        overhead = round(by["ray x1"]["steady_seconds_per_trial"] - by["local"]["steady_seconds_per_trial"], 3)
    config = load_config(args.config, {"data_dir": args.data_dir} if args.data_dir else None)
    result = dict(config=args.config, model=config.model, calibration=config.calibration.model_dump(),
                  trials=args.trials, cpus=cpus, rows=rows, ray_overhead_seconds_per_trial=overhead,
                  environment=environment("cpu"))
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.stem}.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [f"{config.model}, {args.config} space, random search (seed 0), {args.trials} trials per setting, "
             f"{cpus} CPUs; one run, settings one after another.", "",
             "| setting | steady s/trial | steady trials/min | search s (incl. Ray start, worker load) | end to end s |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['steady_seconds_per_trial']:.2f} | {r['steady_trials_per_minute']:.1f} | "
                     f"{r['search_seconds']:.1f} | {r['end_to_end_seconds']:.1f} |")
    if overhead is not None:
        lines += ["", f"Ray's overhead per trial (ray x1 minus local, steady state): {overhead:+.2f} s."]
    (results / f"{args.stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
