"""The import structure: no cycle between files or layers, and every import deferred into a function
body says why. Read from the source (ast), so an import inside a function counts as an edge too:
the graph has no cycle even if every deferred import were hoisted."""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import imports, modules  # scripts/ (on the path: conftest.py), shared with call_chain.py

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    return modules(ROOT)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    modules = _modules()
    graph, deferred = {m: set() for m in modules}, []
    for name, path in modules.items():
        for target, line, inside in imports(name, path, modules):
            graph[name].add(target)
            if inside:
                deferred.append((name, target, line))
    return graph, deferred


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def layer(module: str) -> str:
    """The layer a module belongs to: the core package, the two plug-in packages, the search, the
    Python API (automl_prune/api.py and the package's face, which hands its names on), the CLI."""
    if module in ("automl_prune", "automl_prune.api"):
        return "api"
    for prefix, name in (("automl_prune.search", "search"), ("automl_prune.cli", "cli"), ("automl_prune.__main__", "cli"),
                         ("objectives", "objectives"), ("search_spaces", "search_spaces")):
        if module == prefix or module.startswith(prefix + "."):
            return name
    return "core"


#: the parts of automl_prune/search/, lowest first: a part imports only the parts below it (and itself)
SEARCH_PARTS = ("study", ("execution", "outputs"), "searchers", "phases", "run")


def search_part(module: str) -> int | None:
    """The rank of a module of automl_prune/search/ in SEARCH_PARTS (execution and outputs share one)."""
    parts = module.split(".")
    if parts[:2] != ["automl_prune", "search"] or len(parts) < 3:
        return None
    for rank, names in enumerate(SEARCH_PARTS):
        if parts[2] in ((names,) if isinstance(names, str) else names):
            return rank
    raise AssertionError(f"{module} is in no part of automl_prune/search/ (SEARCH_PARTS)")


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_files():
    graph, _ = _graph()
    assert len(graph) >= 90 and {"objectives.kl", "search_spaces.base", "automl_prune.search.run"} <= set(graph)
    assert _cycles(graph) == []


def test_the_layers_import_downwards_only():
    """core <- objectives, search_spaces <- search <- api <- cli: the core imports none of the others,
    the plug-in packages only the core (and search_spaces not objectives, nor the reverse)."""
    graph, _ = _graph()
    allowed = {"core": {"core"}, "objectives": {"core", "objectives"}, "search_spaces": {"core", "search_spaces"},
               "search": {"core", "objectives", "search_spaces", "search"},
               "api": {"core", "objectives", "search_spaces", "search", "api"},
               "cli": {"core", "objectives", "search_spaces", "search", "api", "cli"}}
    wrong = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(b) not in allowed[layer(a)])
    assert wrong == []


def test_the_parts_of_the_search_import_downwards_only():
    """Inside automl_prune/search/: study <- execution, outputs <- searchers <- phases <- run. The
    study (config, storage, state) knows nothing of how candidates are scored; the execution and the
    outputs nothing of the searchers; the searchers nothing of the phases that run them; execution
    and outputs nothing of each other."""
    graph, _ = _graph()
    ranked = {m: search_part(m) for m in graph if search_part(m) is not None}
    assert {m.split(".")[2] for m in ranked} >= {"study", "execution", "outputs", "searchers", "phases", "run"}
    wrong = sorted(f"{a} -> {b}" for a in ranked for b in graph[a] if b in ranked and a.split(".")[2] != b.split(".")[2]
                   and ranked[b] >= ranked[a])
    assert wrong == []


def test_the_search_part_check_finds_an_upward_import():
    assert search_part("automl_prune.search.study.state") < search_part("automl_prune.search.phases.final")
    assert search_part("automl_prune.search.execution.worker") == search_part("automl_prune.search.outputs.report")
    with pytest.raises(AssertionError):
        search_part("automl_prune.search.elsewhere")


def test_every_deferred_project_import_says_why():
    """An import inside a function body is there on purpose (a heavy dependency loaded only when
    used), and a comment on its line or on the block of imports it closes says so."""
    _, deferred = _graph()
    modules = _modules()
    unexplained = []
    for name, target, line in deferred:
        lines = modules[name].read_text().splitlines()
        block = [lines[line - 1]]  # the import, and the run of imports and comments right above it
        for above in reversed(lines[:line - 1]):
            if not above.strip().startswith(("from ", "import ", "#")):
                break
            block.append(above)
        if not any("# deferred" in text for text in block):
            unexplained.append(f"{modules[name].relative_to(ROOT)}:{line} imports {target}")
    assert unexplained == []


@pytest.mark.parametrize("module", ["objectives", "search_spaces"])
def test_the_plug_in_packages_import_without_the_search(module):
    """Importing an objective or a space does not pull in the search layer (checked in a fresh
    interpreter, where nothing else has imported it yet)."""
    import subprocess
    import sys

    code = f"import sys, {module}; print(any(m.startswith('automl_prune.search') for m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
