"""Memory of the first command on a fresh machine, phase by phase, against the memory model.

The README's first command installs the tool (``--install``: into a fresh virtualenv, measured on
its own) and runs the quickstart search with an empty cache: the GGUF file is dequantized, the
statistics captured, the objectives prepared, then the search, the selection and the final
comparison run. Each phase's peak resident memory is the search process's own measure
(automl_prune/phase_log.py: VmHWM reset at each phase, in meta.json ``phases``); the whole command's
peak is the process tree's resident set, sampled every 0.25 s. The memory model's estimate of each
phase (models/memory_model.search_phases, as ``automl-prune search`` computes it before loading,
for a cold cache) stands beside it.

    python benchmarks/cold_run_memory.py                      # the quickstart, every trial of its budget
    python benchmarks/cold_run_memory.py --install            # and the install into a fresh virtualenv
    python benchmarks/cold_run_memory.py --table RUN_DIR      # the table of a run measured before
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from setup_args import write_results

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MIB = 2**20


def sample_tree(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``; the peak of its process tree's summed resident set (and of its largest process),
    sampled every 0.25 s."""
    import psutil

    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        root, peak, largest = psutil.Process(proc.pid), 0, (0, "")
        while proc.poll() is None:
            try:
                rss = []
                for p in [root, *root.children(recursive=True)]:
                    try:
                        rss.append((p.memory_info().rss, p.name()))
                    except psutil.Error:
                        pass
                peak = max(peak, sum(r for r, _ in rss))
                largest = max([largest, *rss])
            except psutil.Error:
                pass
            time.sleep(0.25)
    return {"command": cmd, "rc": proc.returncode, "seconds": round(time.perf_counter() - start, 1),
            "tree_peak_mib": round(peak / MIB), "largest_process_mib": round(largest[0] / MIB), "largest_process": largest[1]}


def estimates(run: Path) -> dict[str, float]:
    """The memory model's host peak of each phase (MiB) for the run's config, on a cold cache."""
    from automl_prune.models.aliases import get_alias, is_alias
    from automl_prune.models.gguf_cache import default_cache_dir
    from automl_prune.models.memory_model import ModelShape, model_config, search_phases
    from automl_prune.search.study.config import load_config
    from automl_prune.search.execution.setup import worker_job

    config = load_config(run / "config.yaml")
    job = worker_job(config)
    if is_alias(config.model):  # measured on an empty cache: the GGUF file was dequantized first
        job.dequantize_bytes = get_alias(config.model).locate(default_cache_dir(config.cache_dir)).path.stat().st_size
    phases = search_phases(ModelShape.from_config(model_config(config.model, config.cache_dir)), job)
    return {name: round((e.host_peak + e.device_peak) / MIB) for name, e in phases.items()}


def table(result: dict) -> str:
    lines = [f"Cold first run of `{' '.join(result['search']['command'][:3])}` ({result['config']}; an empty cache: GGUF "
             f"dequantization, capture, search, selection, final comparison), {result['machine']}. Peak resident memory "
             "per phase as the search process measured it (VmHWM, reset at each phase), against the memory model's "
             "estimate of that phase.", "",
             "| phase | seconds | measured peak (MiB) | model (MiB) | measured / model |", "|---|---:|---:|---:|---:|"]
    for name, phase in result["phases"].items():
        model = result["model"].get(name)
        ratio = f"{phase['peak_mib'] / model:.2f}" if model else ""
        lines.append(f"| {name} | {phase['seconds']} | {phase['peak_mib']:,} | {'' if model is None else f'{model:,}'} | {ratio} |")
    for name, mib in (result.get("sampled_phases") or {}).items():  # a phase the run's meta.json lacks (older code)
        if name not in result["phases"]:
            model = result["model"].get(name)
            lines.append(f"| {name} (sampled) | | {mib:,} | {model:,} | {mib / model:.2f} |")
    s = result["search"]
    lines += ["", f"The whole search command: {s['tree_peak_mib']:,} MiB (process tree, sampled every 0.25 s; largest "
                  f"process {s['largest_process_mib']:,} MiB), {s['seconds']:.0f} s."]
    if result.get("install"):
        i = result["install"]
        lines.append(f"The install (`bash scripts/install.sh` into a fresh virtualenv, no pip cache): {i['tree_peak_mib']:,} MiB, "
                     f"{i['seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None, help="study config (default: the quickstart)")
    ap.add_argument("--trials", type=int, default=None, help="trial budget (default: the config's)")
    ap.add_argument("--install", action="store_true", help="also measure the install into a fresh virtualenv")
    ap.add_argument("--table", metavar="RUN_DIR", help="only the table of a run measured before (its samples.json)")
    ap.add_argument("--results", default=str(HERE / "results"))
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cold-run-"))
    run = Path(args.table) if args.table else work / "run"
    result = {"config": args.config or "the packaged quickstart", "machine": f"{os.cpu_count()} cores"}
    if not args.table:
        if args.install:
            venv = work / "venv"
            result["install"] = sample_tree(["bash", "-c", f"python3 -m venv {venv} && . {venv}/bin/activate && "
                                                           f"bash {REPO}/scripts/install.sh"],
                                            dict(os.environ, PIP_NO_CACHE_DIR="1"), work / "install.log")
        cmd = ["automl-prune", "search", "--out", str(run), *(["--config", args.config] if args.config else []),
               *(["--trials", str(args.trials)] if args.trials else [])]
        result["search"] = sample_tree(cmd, dict(os.environ, AUTOML_PRUNE_CACHE=str(work / "cache")), work / "search.log")
        (run / "samples.json").write_text(json.dumps({k: result[k] for k in ("search", "install") if k in result}, indent=2))
    else:
        result.update(json.loads((run / "samples.json").read_text()))  # may hold sampled_phases: {name: MiB}
    meta = json.loads((run / "meta.json").read_text())
    result["phases"] = meta["phases"]
    result["model"] = estimates(run)
    result["versions"] = meta.get("versions")
    write_results(args.results, "cold_run_memory", result, table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
