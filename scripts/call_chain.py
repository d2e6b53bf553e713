"""Follow one study config from `automl-prune search` to the first candidate's value, and count how
often the walk climbs back up the import layers.

    python scripts/call_chain.py --config CONFIG [--root CHECKOUT] [--walk] [--json FILE]

It runs `automl-prune search --config CONFIG --trials 1 --no-final` of the checkout at ``--root``
(default: this one) under a profiler and records, from the study's start (``run_search``) to the
moment the first candidate's objective value is returned, every call and return that moves between
two files of the search package (``--within``, default ``automl_prune.search``): the walk of the
config through the search, its excursions into the code below (models, data, pruning, objectives)
left out. A file's floor is its depth in the import graph (read with ast, imports inside functions
included: floor 1 imports no project file, floor k imports one of floor k - 1); a *climb* is a step
of the walk from a file to one on a higher floor: a return to an orchestrator, or a call back up
through an object handed down (counted apart as ``upward_calls``). Prints the counts (with
``--walk`` every step and its floor; with ``--json FILE`` all of it). Measures the structure, not
the speed; runs with any checkout whose `automl_prune.cli.main` takes the search arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from import_graph import imports, modules


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports (anywhere in the file; the package face, which only
    hands names on, left out)."""
    mods = modules(root)
    return {name: {t for t, _, _ in imports(name, path, mods) if t != "automl_prune"} for name, path in mods.items()}


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    @lru_cache(maxsize=None)
    def floor(name: str) -> int:
        return 1 + max((floor(t) for t in graph.get(name, ()) if t in graph), default=0)

    sys.setrecursionlimit(10000)
    return {name: floor(name) for name in graph}


def walk(root: Path, config: str, within: str = "automl_prune.search") -> dict:
    """Run the search of ``config`` with one trial and record the walk between the files of the
    package ``within`` (the search: where the config travels; its excursions into the model, data
    and pruning code below are not steps)."""
    sys.path.insert(0, str(root))
    mods = modules(root)
    by_file = {str(path.resolve()): name for name, path in mods.items() if name == within or name.startswith(within + ".")}
    floor = floors(import_graph(root))
    steps: list[str] = []  # the files the walk passes, consecutive repeats collapsed
    upward: list[str] = []  # calls from a file to one on a higher floor (through an object handed down)
    done = {"value": False, "started": False}

    def profile(frame, event, arg):
        if done["value"] or event not in ("call", "return") or frame.f_code.co_name == "<module>":
            return  # an import running a module's body is no step of the walk
        name = by_file.get(frame.f_code.co_filename)
        if name is None:
            return
        if not done["started"]:  # the walk starts where the study starts: run_search (the command's checks before it are no part)
            if event != "call" or frame.f_code.co_name != "run_search":
                return
            done["started"] = True
        if event == "return":  # back in the caller's file
            caller = frame.f_back
            while caller is not None and caller.f_code.co_filename not in by_file:
                caller = caller.f_back
            target = by_file.get(caller.f_code.co_filename) if caller is not None else None
            if frame.f_code.co_name == "score_candidate" and name.startswith(within):
                done["value"] = True  # the first candidate's value is known
        else:
            target = name
            caller = frame.f_back
            while caller is not None and caller.f_code.co_filename not in by_file:
                caller = caller.f_back
            source = by_file.get(caller.f_code.co_filename) if caller is not None else None
            if source is not None and floor[name] > floor[source]:
                upward.append(f"{source} -> {name}.{frame.f_code.co_name}")
        if target is not None and (not steps or steps[-1] != target):
            steps.append(target)

    from automl_prune.cli import main

    with tempfile.TemporaryDirectory() as out:
        sys.setprofile(profile)
        try:
            code = main(["search", "--config", config, "--trials", "1", "--no-final", "--out", str(Path(out) / "run")])
        finally:
            sys.setprofile(None)
    if code != 0 or not done["value"]:
        raise SystemExit(f"the search did not score a candidate (exit {code})")
    climbs = [(a, b) for a, b in zip(steps, steps[1:]) if floor[b] > floor[a]]
    return dict(root=str(root), steps=len(steps), files=len(set(steps)), climbs=len(climbs), upward_calls=len(upward),
                upward=sorted(set(upward)),
                walk=[f"{floor[s]:>2} {s}" for s in steps],
                climbs_between=sorted({f"{a} -> {b}" for a, b in climbs}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="a study config (the tests' tiny one runs in seconds)")
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="the checkout to measure")
    ap.add_argument("--within", default="automl_prune.search", help="the package whose files the walk steps between")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--walk", action="store_true", help="print every step of the walk")
    args = ap.parse_args()
    result = walk(Path(args.root).resolve(), args.config, args.within)
    if args.walk:
        print("\n".join(result["walk"]))
    print(f"{result['root']}: {result['steps']} steps through {result['files']} files, {result['climbs']} climbs back up, "
          f"{result['upward_calls']} of them calls")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
