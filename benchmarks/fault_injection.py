"""Fault injection on the quickstart model: what a killed, doubled, corrupted or misdirected study
does (issue 18). Every fault runs the real ``automl-prune`` command in real processes on
SmolLM2-135M (the offline quickstart model and text), with small budgets, and the outcome is read
back from the study's own SQLite storage.

    python benchmarks/fault_injection.py [--model smollm2-135m] [--work DIR]

Writes benchmarks/results/fault_injection.{json,md}: one row per fault (fault, outcome, trials
lost, exit codes, seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CLI = [sys.executable, "-m", "automl_prune"]


def base_config(model: str, cache: Path, **over) -> dict:
    return {"model": model, "cache_dir": str(cache),
            "calibration": {"source": "wiki-offline", "nsamples": 32, "seqlen": 512, "seed": 0},
            "probe": {"nsamples": 8, "seqlen": 512, "seed": 1},
            "heldout": {"source": "wiki-offline", "seqlen": 1024, "windows": 8},
            "space": {"metric": {"name": "bawa"}, "allocation": "uniform", "pattern": {"name": "unstructured", "sparsity": 0.5}},
            "objectives": [{"name": "layer_recon", "params": {"weighting": "fisher"}}],
            "searcher": {"name": "tpe", "seed": 0, "n_startup_trials": 20},
            "budget": {"trials": 6},
            "final": {"baselines": [], "top": 0, "fidelity_sample": 0}, **over}


def write(work: Path, name: str, config: dict) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def search(config: Path, out: Path, *extra: str, wait: bool = True):
    cmd = [*CLI, "search", "--config", str(config), "--out", str(out), "--no-final", *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, capture_output=True, text=True)


def rows(out: Path, sql: str, args: tuple = ()) -> list:
    db = out / "study.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=10) as con:
            return con.execute(sql, args).fetchall()
    except sqlite3.OperationalError:
        return []


def count(out: Path, state: str) -> int:
    found = rows(out, "select count(*) from trials where state = ?", (state,))
    return found[0][0] if found else 0


def completed(out: Path) -> dict[int, tuple]:
    """Completed trials: number -> (params, value)."""
    params = {}
    for number, name, value in rows(out, "select t.number, p.param_name, p.param_value from trials t join trial_params p "
                                         "on p.trial_id = t.trial_id where t.state = 'COMPLETE'"):
        params.setdefault(number, {})[name] = value
    values = dict(rows(out, "select t.number, v.value from trials t join trial_values v on v.trial_id = t.trial_id "
                             "where t.state = 'COMPLETE'"))
    return {n: (tuple(sorted(p.items())), values.get(n)) for n, p in params.items()}


def wait_for(predicate, timeout: float = 900.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError("timed out")


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and " INFO " not in ln and " WARNING " not in ln]
    return lines[-1] if lines else ""


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ----- the faults ----------------------------------------------------------------------------------
def kill_9(work: Path, config: Path) -> dict:
    out = work / "kill9"
    start = time.time()
    driver = search(config, out, wait=False)
    try:
        wait_for(lambda: count(out, "COMPLETE") >= 3 and count(out, "RUNNING") == 1)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
    finally:
        driver.kill()
    before = completed(out)
    resumed = search(config, out)
    after = completed(out)
    lost = sum(1 for n, v in before.items() if after.get(n) != v)
    stale = rows(out, "select count(*) from trials t join trial_user_attributes a on a.trial_id = t.trial_id "
                      "where t.state = 'FAIL' and a.key = 'error' and a.value_json like '%stale%'")[0][0]
    retried = rows(out, "select count(*) from trial_system_attributes where key = 'failed_trial'")[0][0]
    repeated = len(after) - len({p for p, _ in after.values()})
    return dict(fault="kill -9 while a trial runs, then the same command", exit=[-9, resumed.returncode],
                outcome=f"{len(before)} completed before the kill kept; the trial in flight failed as stale: {stale}, "
                        f"retried: {retried}; {len(after)} completed after the resume (budget 6), {repeated} repeated",
                trials_lost=lost, seconds=round(time.time() - start, 1))


def two_drivers(work: Path, config: Path) -> dict:
    out = work / "two"
    start = time.time()
    first = search(config, out, wait=False)
    try:
        wait_for(lambda: count(out, "COMPLETE") >= 1)
        second = search(config, out)
        first.communicate()
    finally:
        first.kill()
    finished = len(completed(out))
    return dict(fault="a second driver on the same study while the first runs", exit=[first.returncode, second.returncode],
                outcome=f"second refused: {one_line(second.stderr)!r}; the study holds {finished} completed trials "
                        f"(budget 6), {rows(out, 'select count(*) from trials')[0][0]} in all",
                trials_lost=0 if finished == 6 else 6 - finished, seconds=round(time.time() - start, 1))


def fingerprint(work: Path, config: Path) -> dict:
    out = work / "kill9"  # a finished study
    before = completed(out)
    start = time.time()
    other = search(config, out, "--model", "gemma3-270m")
    return dict(fault="resume with another model (--model gemma3-270m) on a study of SmolLM2", exit=[other.returncode],
                outcome=f"refused before the model loaded ({time.time() - start:.1f} s): {one_line(other.stderr)[:160]}...",
                trials_lost=sum(1 for n, v in before.items() if completed(out).get(n) != v), seconds=round(time.time() - start, 1))


def resumed_sampler(work: Path, config: dict) -> dict:
    out = work / "reseed"
    path = write(work, "reseed", config)
    start = time.time()
    first = search(path, out)
    before = {p for p, _ in completed(out).values()}
    second = search(path, out, "--trials", "10")
    after = completed(out)
    new = [p for n, (p, _) in sorted(after.items())][len(before):]
    return dict(fault="resume a TPE study in its random start-up (6 -> 10 trials)", exit=[first.returncode, second.returncode],
                outcome=f"{len(new)} new candidates after the resume, {sum(p in before for p in new)} of them repeats",
                trials_lost=0, seconds=round(time.time() - start, 1))


def pymoo_files(work: Path, config: dict) -> list[dict]:
    out = work / "pymoo"
    path = write(work, "pymoo", {**config, "space": {**config["space"], "pattern": {"name": "sparsity", "low": 0.3, "high": 0.7}},
                                 "objectives": [{"name": "layer_recon"}, {"name": "sparsity"}],
                                 "searcher": {"name": "pymoo-nsga3", "seed": 0, "population": 4}, "budget": {"trials": 8}})
    results = []
    start = time.time()
    first = search(path, out)
    marker = work / "owned"
    (out / "pymoo.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    before = completed(out)
    crafted = search(path, out, "--trials", "12")
    results.append(dict(fault="a crafted pymoo.pkl in the output folder (runs `touch` when unpickled)",
                        exit=[first.returncode, crafted.returncode],
                        outcome=f"never read: code ran: {marker.exists()}; the search resumed from the study "
                                f"({len(completed(out))} completed)",
                        trials_lost=sum(1 for n, v in before.items() if completed(out).get(n) != v),
                        seconds=round(time.time() - start, 1)))
    start = time.time()
    (out / "pymoo.pkl").write_bytes(pickle.dumps(_Payload(marker))[:20])
    before = completed(out)
    truncated = search(path, out, "--trials", "16")
    results.append(dict(fault="a truncated pymoo.pkl", exit=[truncated.returncode],
                        outcome=f"never read; the population rebuilt from the study ({len(completed(out))} completed)",
                        trials_lost=sum(1 for n, v in before.items() if completed(out).get(n) != v),
                        seconds=round(time.time() - start, 1)))
    return results


def stats_cache(work: Path, config: Path, cache: Path) -> dict:
    files = sorted(cache.glob("stats/**/block-*.safetensors"))
    target = files[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    start = time.time()
    run = search(config, work / "kill9", "--trials", "7")
    warned = "content hash mismatch" in run.stderr
    miss = "statistics: cache miss" in run.stderr
    return dict(fault="one bit flipped inside the statistics cache (same size)", exit=[run.returncode],
                outcome=f"detected: {warned}; recomputed (cache miss): {miss}", trials_lost=0,
                seconds=round(time.time() - start, 1))


def storage_urls(work: Path, config: Path) -> list[dict]:
    out = []
    for url in ("garbage", "foo://host/db", f"sqlite:///{work}/no/such/folder/study.db",
                "postgresql://me:s3cret@127.0.0.1:1/db"):
        folder = work / f"storage-{len(out)}"
        start = time.time()
        run = search(config, folder, "--storage", url)
        line = one_line(run.stderr)
        out.append(dict(fault=f"--storage {url.replace('s3cret', '***')}", exit=[run.returncode],
                        outcome=f"{len([ln for ln in run.stderr.splitlines() if ln.strip()])} line: {line[:150]}; "
                                f"output folder left: {folder.exists()}; password shown: {'s3cret' in run.stderr}",
                        trials_lost=0, seconds=round(time.time() - start, 1)))
    return out


def bad_calibration(work: Path, config: dict) -> dict:
    empty = work / "empty.txt"
    empty.write_text("")
    path = write(work, "badcalib", {**config, "calibration": {**config["calibration"], "source": str(empty)}})
    start = time.time()
    run = search(path, work / "badcalib")
    return dict(fault="an empty calibration file", exit=[run.returncode],
                outcome=f"refused before the model loaded ({time.time() - start:.1f} s): {one_line(run.stderr)[:150]}",
                trials_lost=0, seconds=round(time.time() - start, 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--work", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="fault-injection-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    config = base_config(args.model, cache)
    path = write(work, "base", config)
    table = []
    for step in (lambda: kill_9(work, path), lambda: two_drivers(work, path), lambda: fingerprint(work, path),
                 lambda: resumed_sampler(work, config), lambda: stats_cache(work, path, cache)):
        table.append(step())
        print(json.dumps(table[-1]), flush=True)
    for row in pymoo_files(work, config) + storage_urls(work, path) + [bad_calibration(work, config)]:
        table.append(row)
        print(json.dumps(row), flush=True)
    from automl_prune.provenance import versions

    report = dict(model=args.model, calibration=config["calibration"], budget=config["budget"], versions=versions(), faults=table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fault_injection.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Fault injection ({args.model}, calibration wiki-offline 32 x 512, layer_recon, budget 6 trials)", "",
             "| fault | exit codes | outcome | trials lost | seconds |", "|---|---|---|---:|---:|"]
    lines += [f"| {r['fault']} | {', '.join(map(str, r['exit']))} | {r['outcome'].replace('|', '/')} | {r['trials_lost']} | "
              f"{r['seconds']} |" for r in table]
    (RESULTS / "fault_injection.md").write_text("\n".join(lines) + "\n")
    print((RESULTS / "fault_injection.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
