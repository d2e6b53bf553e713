"""Plans made on one model applied to another with an explicit transfer (``automl-prune prune --plan
FILE --transfer metric|depth``), against the named methods on the target model.

Every row is what one ``automl-prune prune`` command (recorded with the row) does on the target model,
run in one process (the model, its windows and its dense perplexity loaded once), with the
acceptance protocol: calibration C4 32 x 512 seed 0, held-out WikiText-2 test at seqlen 1024, first
16 windows. Rows: Wanda one-shot and ADMM sequential (the best named method in its best mode) at each
target, then the committed SmolLM2-135M plans (benchmarks/plans/selected-*.yaml) transferred by
metric and, for unstructured plans with a per-layer allocation, by relative depth. Each finished row
is written at once; ``--resume`` keeps the rows already in the results file.

    python benchmarks/transfer.py --data-dir ../shared/data            # SmolLM2 plans -> Gemma-3-270M
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from setup_args import add_model_and_data, write_results

HERE = Path(__file__).resolve().parent
PLANS = HERE / "plans"

#: (label, target, prune arguments); a plan's target is fixed by the plan
ROWS = [  # the rows a reader needs first come first (a row is written as soon as it is finished)
    ("wanda", "0.5", ["--method", "wanda", "--sparsity", "0.5"]),
    ("selected-50 (metric)", "0.5", ["--plan", str(PLANS / "selected-50.yaml"), "--transfer", "metric"]),
    ("selected-50 (depth)", "0.5", ["--plan", str(PLANS / "selected-50.yaml"), "--transfer", "depth"]),
    ("wanda", "2:4", ["--method", "wanda", "--pattern", "2:4"]),
    ("selected-2-4 (metric)", "2:4", ["--plan", str(PLANS / "selected-2-4.yaml"), "--transfer", "metric"]),
    ("selected-50-update (depth)", "0.5", ["--plan", str(PLANS / "selected-50-update.yaml"), "--transfer", "depth"]),
    ("admm sequential", "0.5", ["--method", "admm", "--sparsity", "0.5", "--mode", "sequential"]),
    ("selected-2-4-update (metric)", "2:4", ["--plan", str(PLANS / "selected-2-4-update.yaml"), "--transfer", "metric"]),
    ("admm sequential", "2:4", ["--method", "admm", "--pattern", "2:4", "--mode", "sequential"]),
    ("selected-50-update (metric)", "0.5", ["--plan", str(PLANS / "selected-50-update.yaml"), "--transfer", "metric"]),
]


class Target:
    """The target model loaded once, with its calibration windows, held-out windows, dense perplexity
    and dense weights (put back before every row), so each row costs its prune and one evaluation."""

    def __init__(self, args):
        from automl_prune.data import calibration_windows, evaluation_windows
        from automl_prune.evaluation.perplexity import perplexity
        from automl_prune.models.adapters import needs_bos, prunable_shapes
        from automl_prune.models.loading import load_model

        self.args = args
        loaded = load_model(args.model, device="cpu", cache_dir=args.cache_dir)
        self.model, self.info, tok = loaded.model, loaded.info, loaded.tokenizer
        bos = needs_bos(self.model)
        self.calib = calibration_windows(args.calib, tok, nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                                         data_dir=args.data_dir, bos=bos)
        self.heldout = evaluation_windows(args.eval, tok, seqlen=args.eval_seqlen, max_windows=args.eval_windows,
                                          data_dir=args.data_dir, bos=bos)
        self.shapes = prunable_shapes(self.model)
        self.dense_ppl = perplexity(self.model, self.heldout.input_ids, desc="dense")["ppl"]
        self.dense = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def plan(self, extra: list[str]):
        """The plan a row's ``automl-prune prune`` arguments describe, carried over as the CLI does."""
        from automl_prune.api import as_plan
        from automl_prune.pruning.transfer import transfer_plan

        given = {flag[2:]: float(value) if flag == "--sparsity" else value for flag, value in zip(extra[::2], extra[1::2])}
        what, transfer = given.pop("method", None) or given.pop("plan"), given.pop("transfer", None)
        plan = as_plan(what, **given)
        return transfer_plan(plan, self.shapes, transfer, self.args.model)[0] if transfer else plan

    def run_row(self, extra: list[str]) -> dict:
        from automl_prune.evaluation.perplexity import perplexity
        from automl_prune.provenance import environment
        from automl_prune.pruning.apply import prune_model

        a = self.args
        self.model.load_state_dict(self.dense)
        plan = self.plan(extra)
        start = time.perf_counter()
        result = prune_model(self.model, plan, self.calib.input_ids, cache_dir=a.cache_dir, windows_info=self.calib.info)
        seconds = time.perf_counter() - start
        ppl = perplexity(self.model, self.heldout.input_ids, desc="pruned")["ppl"]
        cmd = ["automl-prune", "prune", "--model", a.model, "--calib", a.calib, "--nsamples", str(a.nsamples), "--seqlen",
               str(a.seqlen), "--seed", str(a.seed), "--eval", a.eval, "--eval-seqlen", str(a.eval_seqlen), "--eval-windows",
               str(a.eval_windows), *extra, *(["--data-dir", a.data_dir] if a.data_dir else []), "--out", "DIR"]
        return {"command": shlex.join(cmd), "prune_seconds": round(seconds, 1), "dense_ppl": self.dense_ppl, "ppl": ppl,
                "realised_sparsity": result.realised_sparsity, "mode": plan.mode, "plan": plan.to_yaml(), "model": self.info,
                "calibration": self.calib.info, "evaluation": self.heldout.info, "environment": environment("cpu")}


def table(result: dict) -> str:
    rows = result["rows"]
    lines = [f"{result['model']}: plans of {result['source_model']} transferred (`automl-prune prune --plan FILE --transfer "
             f"metric|depth`); calibration {result['calib']} {result['nsamples']} x {result['seqlen']} seed {result['seed']}; "
             f"held-out {result['eval']} perplexity at seqlen {result['eval_seqlen']}, first {result['eval_windows']} windows.", ""]
    for target in ("0.5", "2:4"):
        mine = [(k, r) for k, r in rows.items() if r["target"] == target]
        base = {r["label"]: r["ppl"] for _, r in mine if "ppl" in r and not r["label"].startswith("selected")}
        best = min(base.values()) if base else None
        lines += [f"**{target}**", "", "| row | ppl | vs wanda | vs the best named row | sparsity | prune seconds |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, r in mine:
            if "ppl" not in r:
                lines.append(f"| {r['label']} | failed: {' '.join(r['error'])} | | | | |")
                continue
            vs_wanda, vs_best = (("" if ref is None else f"{r['ppl'] / ref - 1:+.1%}") for ref in (base.get("wanda"), best))
            lines.append(f"| {r['label']} | {r['ppl']:.2f} | {vs_wanda} | {vs_best} | {r['realised_sparsity']:.4f} | {r['prune_seconds']} |")
        lines.append("")
    dense = next((r["dense_ppl"] for r in rows.values() if "dense_ppl" in r), None)
    if dense is not None:
        lines.append(f"Dense perplexity: {dense:.2f}.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_and_data(ap)
    ap.set_defaults(model="gemma3-270m")
    ap.add_argument("--source-model", default="smollm2-135m", help="the model the plans were made on (recorded)")
    ap.add_argument("--only", nargs="*", help="labels of the rows to run (default all)")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in the results file")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    stem = f"transfer_{args.model}"
    path = Path(args.results) / f"{stem}.json"
    result = {k: getattr(args, k) for k in ("model", "source_model", "calib", "nsamples", "seqlen", "seed", "eval",
                                            "eval_seqlen", "eval_windows")}
    result["rows"] = json.loads(path.read_text())["rows"] if args.resume and path.exists() else {}
    target = None
    for label, target_of, extra in ROWS:
        key = f"{label} @ {target_of}"
        if (args.only and label not in args.only) or ("ppl" in result["rows"].get(key, {})):
            continue
        print(f"{key} ...", file=sys.stderr, flush=True)
        target = target or Target(args)
        result["rows"][key] = dict(label=label, target=target_of, **target.run_row(extra))
        write_results(args.results, stem, result, table(result))
    write_results(args.results, stem, result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
