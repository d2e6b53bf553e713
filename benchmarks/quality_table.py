"""Quality of every named method: held-out perplexity and the zero-shot average, unstructured and
N:M, one-shot and sequential, with and without the SparseGPT weight update, plus the searched plans.

Cells (each a row of the JSON, written as soon as it is finished):

* ``one-shot``: dense statistics computed once (with the Gram matrix) and shared by every cell;
  held-out perplexity and, unless ``--zero-shot-limit 0``, the zero-shot average over the seven
  tasks on their first N documents each (the same documents for every cell);
* ``one-shot + SparseGPT update``: the method's mask, weights updated by SparseGPT's solver;
* ``sequential``: each block's statistics recomputed on the outputs of the already pruned blocks.

Methods: the named methods of ``automl-prune prune --method``, ``owl`` (Wanda with OWL's allocation,
M = 5, lambda = 0.08, unstructured only) and ``searched`` (the plans in plans/searched.yaml, where
the target has one). Cells that do not apply are skipped: magnitude uses no activations (sequential
gives its one-shot masks), SparseGPT and ADMM bring their own update, the searched plans were
searched one-shot.

The model is loaded once and its dense weights restored before each cell. ``--resume`` keeps the
cells already in OUT.json (written with the same model and windows) and fills in only what is
missing, e.g. the zero-shot figures of a cell that has its perplexity.

    python benchmarks/quality_table.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import time
from pathlib import Path

import yaml
from setup_args import add_model_and_data, previous_report

from automl_prune import api
from automl_prune.allocation.profile import ModelProfile
from automl_prune.data import evaluation_windows
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.evaluation.zeroshot.suite import ZeroShotSuite
from automl_prune.provenance import environment
from automl_prune.pruning.methods import plan_for_method
from automl_prune.pruning.plan import PruningPlan
from search_spaces import make_space

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
VARIANTS = ("one-shot", "one-shot + SparseGPT update", "sequential")
OWN_UPDATE = {"sparsegpt", "admm"}


def applies(method: str, target: str, variant: str, searched: dict) -> bool:
    nm = ":" in target
    if method == "owl" and nm:
        return False
    if method == "searched" and target not in searched:
        return False
    if variant == "one-shot + SparseGPT update":
        return method not in OWN_UPDATE
    if variant == "sequential":
        return method not in {"magnitude", "searched"}
    return True


def plan_of(method: str, target: str, variant: str, searched: dict, profile: ModelProfile) -> PruningPlan:
    nm = ":" in target
    mode = "sequential" if variant == "sequential" else "one-shot"
    if method == "owl":
        space = make_space({"metric": {"name": "bawa"}, "allocation": {"name": "owl"},
                            "pattern": {"name": "unstructured", "sparsity": float(target)}})
        plan = space.decode(space.named_points()["wanda+owl"], profile)
    elif method == "searched":
        space = make_space(searched[target]["space"])
        plan = space.bind(profile).decode({}, profile)
    else:
        plan = plan_for_method(method, sparsity=None if nm else float(target), pattern=target if nm else "unstructured")
    update = "sparsegpt" if variant == "one-shot + SparseGPT update" else plan.update
    return plan.with_fields(mode=mode, update=update)


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except OSError:
        return None


def load_previous(path: Path, fresh: dict) -> dict | None:
    """The report already at ``path`` if it was written for the same model and windows; None if there is none."""
    report = previous_report(path, fresh)
    for r in (report or {}).get("rows", []):  # cells of the first version of this script: no variant field
        r.setdefault("variant", r.get("mode", "one-shot"))
    return report


def zero_shot_summary(result: dict) -> dict:
    return dict(acc=result["average"]["acc"], acc_norm=result["average"]["acc_norm"],
                tasks={k: v["acc"] for k, v in result["tasks"].items()},
                seconds=round(sum(v["seconds"] for v in result["tasks"].values()), 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_data(ap)
    ap.add_argument("--methods", default="magnitude,wanda,ria,stade,bawa,owl,sparsegpt,admm,dsnot,searched")
    ap.add_argument("--targets", default="0.5,0.6,0.7,2:4,4:8", help="comma-separated sparsities and N:M patterns")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    ap.add_argument("--zero-shot-limit", type=int, default=20, help="documents per task (first N); 0: no zero-shot")
    ap.add_argument("--zero-shot-variants", default="one-shot", help="variants that also get the zero-shot average")
    ap.add_argument("--searched", default=str(HERE / "plans" / "searched.yaml"))
    ap.add_argument("--out", default=str(RESULTS / "quality_smollm2"))
    ap.add_argument("--resume", action="store_true", help="keep the cells already in OUT.json and fill in what is missing")
    ap.add_argument("--render", action="store_true", help="only rewrite OUT.md from OUT.json")
    args = ap.parse_args()
    if args.render:
        out = Path(args.out)
        if not out.with_suffix(".json").exists():
            raise SystemExit(f"--render: {out.with_suffix('.json')} does not exist; run the benchmark first")
        report = json.loads(out.with_suffix(".json").read_text())
        out.with_suffix(".md").write_text(markdown(report, yaml.safe_load(Path(args.searched).read_text()), args))
        return
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")

    searched = yaml.safe_load(Path(args.searched).read_text())
    loaded = api.load(args.model, device="cpu", cache_dir=args.cache_dir)
    model, tok = loaded.model, loaded.tokenizer
    t = time.perf_counter()
    computed = api.calibrate(loaded, api.Calibration(source=args.calib, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed),
                            data_dir=args.data_dir, bos=False, cache_dir=args.cache_dir)  # bos=False: as this table was measured
    capture_s = time.perf_counter() - t
    calib = computed.windows
    evalw = evaluation_windows(args.eval, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows, data_dir=args.data_dir)
    profile = ModelProfile.build(model, computed.stats, with_alphas=False)
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    suite = ZeroShotSuite("all", tok, limit=args.zero_shot_limit, data_dir=args.data_dir) if args.zero_shot_limit else None

    out = Path(args.out)
    fresh = dict(model=loaded.info, calibration=calib.info, evaluation=evalw.info, rows=[],
                 statistics=dict(computed.info, seconds=round(capture_s, 1)), environment=environment("cpu"))
    report = (load_previous(out.with_suffix(".json"), fresh) if args.resume else None) or fresh
    report["zero_shot_limit"] = args.zero_shot_limit
    if "dense" not in report:
        report["dense"] = perplexity(model, evalw.input_ids, desc="dense")
    if suite is not None and "zero_shot" not in report["dense"]:
        report["dense"]["zero_shot"] = zero_shot_summary(suite.evaluate(model, batch_size=16, progress=False))
    cells = {(r["method"], r["target"], r["variant"]): r for r in report["rows"]}

    def write() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str))
        out.with_suffix(".md").write_text(markdown(report, searched, args))

    write()
    commit = git_commit()
    for variant in variants:  # one-shot cells of every target first: the most informative part of a long run
        for target in args.targets.split(","):
            for method in args.methods.split(","):
                if not applies(method, target, variant, searched):
                    continue
                cell = cells.get((method, target, variant))
                want_zs = suite is not None and variant in args.zero_shot_variants.split(",")
                if cell is not None and (not want_zs or "zero_shot" in cell):
                    continue
                plan = plan_of(method, target, variant, searched, profile)
                model.load_state_dict(dense_state)
                t = time.perf_counter()
                result = api.prune(loaded, plan, statistics=computed, data_dir=args.data_dir, say=lambda line: None, progress=False)
                seconds = time.perf_counter() - t
                if cell is None:
                    ppl = perplexity(model, evalw.input_ids, desc=f"{method} {target} {variant}")["ppl"]
                    cell = dict(method=method, target=target, variant=variant, mode=plan.mode, ppl=ppl,
                                prune_seconds=round(seconds, 2), realised_sparsity=round(result.realised_sparsity, 6),
                                plan=plan.to_dict(), commit=commit)
                    report["rows"].append(cell)
                    cells[(method, target, variant)] = cell
                if want_zs:
                    cell["zero_shot"] = zero_shot_summary(suite.evaluate(model, batch_size=16, progress=False))
                zs = cell.get("zero_shot", {}).get("acc")
                print(f"{method:10s} {target:5s} {variant:28s} ppl {cell['ppl']:10.3f}  zero-shot "
                      f"{'-' if zs is None else f'{zs:.4f}'}  prune {seconds:6.1f} s", flush=True)
                write()
    write()


def _fmt_ppl(cell: dict | None) -> str:
    return "" if cell is None else f"{cell['ppl']:.2f}"


def _fmt_zs(cell: dict | None, key: str) -> str:
    return "" if cell is None or "zero_shot" not in cell else f"{cell['zero_shot'][key]:.3f}"


def markdown(report: dict, searched: dict, args) -> str:
    cal, ev, dense = report["calibration"], report["evaluation"], report["dense"]
    limit = report.get("zero_shot_limit")
    zs_dense = dense.get("zero_shot")
    lines = [f"{report['model'].get('spec', 'model')}: calibration {cal.get('source')} {cal.get('nsamples')} x "
             f"{cal.get('seqlen')} seed {cal.get('seed')}; held-out {ev.get('source')} perplexity at seqlen "
             f"{ev.get('seqlen')}, first {ev.get('n_windows')} windows. Zero-shot: average accuracy (acc, and "
             f"acc_norm where a task has it) over PIQA, BoolQ, ARC-Easy, ARC-Challenge, WinoGrande, HellaSwag and "
             f"LAMBADA, first {limit} documents of each task (built-in scorer, lm-eval conventions; standard error of "
             f"the average about 0.04 at this size), for the one-shot cells. Dense: ppl {dense['ppl']:.2f}"
             + (f", zero-shot acc {zs_dense['acc']:.3f} / acc_norm {zs_dense['acc_norm']:.3f}." if zs_dense else "."), ""]
    by = {(r["method"], r["target"], r["variant"]): r for r in report["rows"]}
    targets = sorted(dict.fromkeys(r["target"] for r in report["rows"]), key=lambda t: (":" in t, t))  # unstructured first
    methods = list(dict.fromkeys(r["method"] for r in report["rows"]))
    for target in targets:
        kind = "N:M" if ":" in target else "unstructured"
        lines += [f"**{target} ({kind})**", "",
                  "| method | ppl one-shot | zero-shot acc | zero-shot acc_norm | ppl + SparseGPT update | ppl sequential | sparsity |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for method in methods:
            one, upd, seq = (by.get((method, target, v)) for v in VARIANTS)
            if one is None and upd is None and seq is None:
                continue
            label = searched.get(target, {}).get("label", "searched") if method == "searched" else method
            if method == "owl":
                label = "wanda + OWL (M 5, lambda 0.08)"
            any_cell = one or upd or seq
            lines.append(f"| {label} | {_fmt_ppl(one)} | {_fmt_zs(one, 'acc')} | {_fmt_zs(one, 'acc_norm')} | "
                         f"{_fmt_ppl(upd)} | {_fmt_ppl(seq)} | {any_cell['realised_sparsity']:.4f} |")
        lines.append("")
    missing = [cell for cell in itertools.product(methods, targets, VARIANTS) if cell not in by and applies(*cell, searched)]
    lines.append("Empty cells do not apply (magnitude has no sequential form; SparseGPT and ADMM bring their own "
                 "update; OWL allocates unstructured sparsity; the searched plans were searched one-shot)"
                 + (f"; {len(missing)} that apply were not run (`--resume` fills them in)." if missing else
                    "; every cell that applies was measured.")
                 + " Cells without a commit in the JSON come from the first version of this script (same settings, "
                 "perplexity only).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
