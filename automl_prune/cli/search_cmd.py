"""`automl-prune search` and `automl-prune report`."""

from __future__ import annotations

import argparse
import os
from importlib.resources import files
from pathlib import Path

from ..errors import UserError
from . import paths

# the offline quickstart, shipped in the package (automl_prune/presets; search.study.config.preset)
DEFAULT_CONFIG = files("automl_prune.presets") / "quickstart.yaml"
# the built-in recipe, run when a target is given without --config (search/study/recipe.py)
RECIPE_CONFIG = files("automl_prune.presets") / "auto.yaml"


def register(sub) -> None:
    p = sub.add_parser("search", help="search pruning plans for a model (TPE, NSGA-III); resumable",
                       description="Search the pruning metric / allocation / pattern space of a config for the plan "
                                   "that suits this model, then compare the best plan(s) with the named methods on "
                                   "held-out text. Re-running the same command resumes the study.")
    p.add_argument("--config", metavar="FILE", help=f"study config YAML (default: {DEFAULT_CONFIG.name}, the offline quickstart)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<config name>)")
    p.add_argument("--trials", type=int, metavar="N", help="total trial budget of the study (budget.trials)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds of search in this run (budget.timeout)")
    p.add_argument("--model", metavar="M", help="override the config's model")
    p.add_argument("--data-dir", metavar="DIR", help="offline data folder (default $AUTOML_PRUNE_DATA_DIR)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default sqlite in the output folder)")
    p.add_argument("--seed", type=int, metavar="K", help="searcher seed")
    p.add_argument("--executor", choices=("local", "ray"), help="run trials in this process (local) or on Ray")
    p.add_argument("--ray-address", metavar="ADDR", help="join this Ray cluster (default $RAY_ADDRESS, else a local instance)")
    p.add_argument("--concurrent", type=int, metavar="K", help="trials run at once on Ray (ray.max_concurrent_trials)")
    p.add_argument("--offload", choices=("none", "cpu", "disk"), help="where the decoder blocks' weights live (offload): "
                   "on the device, in host memory or in memory-mapped files; offloaded, candidates stream block by block")
    p.add_argument("--no-final", action="store_true", help="skip the held-out comparison at the end")
    r = p.add_argument_group("the built-in recipe (without --config: the auto preset; with one: its recipe section)")
    r.add_argument("--sparsity", type=float, metavar="S", help="unstructured target sparsity (recipe.sparsity)")
    r.add_argument("--pattern", metavar="N:M", help="N:M target pattern, e.g. 2:4 (recipe.pattern)")
    r.add_argument("--update", choices=("none", "sparsegpt", "admm", "auto"),
                   help="weight update after the mask (recipe.update; auto: ADMM, default)")
    r.add_argument("--hours", type=float, metavar="H", help="time budget of the whole study (recipe.hours, default 1)")
    p.set_defaults(func=run)
    r = sub.add_parser("report", help="rebuild report.md, trials.csv, plans and plots of a search folder")
    r.add_argument("dir", metavar="DIR")
    r.set_defaults(func=run_report)


def run(args: argparse.Namespace) -> int:
    # deferred: a subcommand loads the model stack only when it runs (--help and argument errors answer at once)
    from .. import api
    from ..search.study.config import load_config

    args.data_dir = args.data_dir or os.environ.get("AUTOML_PRUNE_DATA_DIR")
    paths.check(args, out=paths.SEARCH)  # every path option, before anything is read
    recipe = {k: v for k, v in {"recipe.sparsity": args.sparsity, "recipe.pattern": args.pattern,
                                "recipe.update": args.update, "recipe.hours": args.hours}.items() if v is not None}
    config_path = Path(args.config) if args.config else (RECIPE_CONFIG if recipe else DEFAULT_CONFIG)
    overrides = {k: v for k, v in {"budget.trials": args.trials, "budget.timeout": args.timeout, "model": args.model,
                                   "storage": args.storage, "searcher.seed": args.seed, "executor": args.executor,
                                   "ray.address": args.ray_address, "ray.max_concurrent_trials": args.concurrent,
                                   "offload": args.offload}.items()
                 if v is not None}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    overrides.update(recipe)
    config = load_config(config_path, overrides)  # every field checked before a model is loaded
    name = config.recipe.label() if config_path is RECIPE_CONFIG else Path(config_path.name).stem
    out = Path(args.out) if args.out else Path("runs") / name  # runs/<config name>, or runs/auto-50-update
    paths.check_values(config.model_dump(), lambda field: f"{field} of {config_path.name}")  # the config's paths
    if not args.out:
        paths.check_out_dir(out, "--out (default)", marks=paths.SEARCH)
    report = api.search(config, out=out, final=not args.no_final).report
    print(f"\nreport: {report}")
    print(report.read_text().split("## Plots")[0].split("## Held-out comparison")[-1].strip())
    return 0


def run_report(args: argparse.Namespace) -> int:
    from ..search.outputs.writer import rebuild  # deferred: as in run()

    folder = Path(args.dir)
    if not (folder / "config.yaml").is_file():
        raise UserError(f"{folder} is not a search folder (no config.yaml); pass the --out folder of a search")
    paths.check(args, dir=paths.SEARCH)  # the report is written into it
    paths.check_yaml_file(folder / "config.yaml", "the search folder's")
    print(rebuild(folder))
    return 0
