"""Fuzz the command line's checks: a seeded generator feeds every subcommand random combinations of
flags and values, with at least one mistake in each case (a bad number, an unknown choice, a missing
option, a path that is a file, missing or below a file, a malformed YAML plan or config), and each
case must be refused by the rule of cli_checks.py (exit 2, no traceback, the error on one line) with
nothing written. ``main`` runs in this process; loading a model, starting a search or reaching the
hub is a failure of the case (the generator made a valid one, or a check comes too late).

$AUTOML_PRUNE_FUZZ_SEED and $AUTOML_PRUNE_FUZZ_CASES change the seed (0) and the count (600)."""

from __future__ import annotations

import os
import random

import pytest
import yaml
from cli_checks import PLAN, SPACE, refusal_problem, run_cli, search_config, snapshot, workspace

SEED = int(os.environ.get("AUTOML_PRUNE_FUZZ_SEED", "0"))
CASES = int(os.environ.get("AUTOML_PRUNE_FUZZ_CASES", "600"))


class ReachedLoad(Exception):
    """A case got past every check: it would load a model, run a search or read from the hub."""


# ----------------------------------------------------------------------------- malformed YAML
BROKEN_YAML = ["metric: [wanda\n", "a: b: c\n", "metric:\n  name: wanda\n sparsity: 0.5\n", "{unclosed: 1\n", "key: 'open\n",
               "\t- tab\n", "- a\n- b\n", "42\n", "", "~\n", "just text\n", "[1, 2]\n", b"\xff\xfe\x00\x01binary"]
PLAN_MISTAKES = [
    {"sparsty": 0.5}, {"foo": 1}, {"sparsity": "half"}, {"sparsity": -0.1}, {"sparsity": 1.0}, {"sparsity": 1.5},
    {"sparsity": float("nan")}, {"sparsity": {"a": 1}}, {"mode": 3}, {"mode": "two-shot"}, {"update": "bogus"},
    {"refine": 1}, {"permute": "lsa"}, {"pattern": "3:2"}, {"pattern": "x"}, {"pattern": "0:4"},
    {"group": "diagonal"}, {"layer_sparsity": "abc"}, {"layer_sparsity": {"0.mlp.up_proj": "x"}},
    {"layer_sparsity": {"0.mlp.up_proj": 1.5}}, {"layer_sparsity": [0.5]}, {"metric": 5}, {"metric": "nosuch"},
    {"metric": {"name": "nosuch"}}, {"metric": {}}, {"metric": None}, {"metric": {"name": "wanda", "alpha": "fast"}},
    {"admm": {"iterations": 0}}, {"admm": "x"}, {"dsnot": {"max_cycles": -1}},
    {"calibration": {"source": "c4", "nsamples": 0, "seqlen": 8}}, {"heldout": "x"}, {"model": {"blocks": 0}},
]
#: search config mistakes; a command-line flag that sets the same field (--trials ...) is left out with them
OVERRIDES = {"budget": ("--trials", "--timeout"), "searcher": ("--seed",), "executor": ("--executor",),
             "offload": ("--offload",), "ray": ("--concurrent",)}
CONFIG_MISTAKES = [
    {"modle": "x"}, {"budget": {"trials": 2, "foo": 1}}, {"budget": {"trials": "many"}}, {"budget": {"trials": 0}},
    {"budget": {"timeout": -5}}, {"space": 5}, {"space": {**SPACE, "metric": {"name": "nosuch"}}},
    {"space": {**SPACE, "pattern": {"name": "unstructured", "sparsity": 1.5}}},
    {"space": {**SPACE, "pattern": {"name": "unstructured", "sparsity": -0.2}}},
    {"space": {**SPACE, "allocation": "nosuch"}}, {"objectives": {"name": "layer_recon"}},
    {"objectives": [{"name": "nosuch"}]}, {"objectives": []}, {"searcher": {"name": "nosuch"}},
    {"searcher": {"name": "tpe", "seed": "x"}}, {"calibration": {"source": "c4", "nsamples": 0, "seqlen": 64}},
    {"calibration": {"source": "c4", "nsamples": 8, "seqlen": 4}}, {"executor": "mpi"}, {"offload": "gpu"},
    {"dtype": "int8"}, {"heldout": [1]}, {"final": {"baselines": ["nosuch"]}}, {"ray": {"max_concurrent_trials": 0}},
]


def malformed(rng: random.Random, good: dict, mistakes: list[dict], case: "Case | None" = None) -> str | bytes:
    """A YAML file's content that is broken (syntax, not a mapping, not text) or a good mapping
    with one or two wrong fields (``case``: its flags that would set those fields are dropped)."""
    if rng.random() < 0.3:
        return rng.choice(BROKEN_YAML)
    data = dict(good)
    for mistake in rng.sample(mistakes, rng.choice((1, 1, 2))):
        data.update(mistake)
        for flag in (f for key in mistake for f in OVERRIDES.get(key, ())) if case is not None else ():
            case.opts.pop(flag, None)
    return yaml.safe_dump(data)


# ----------------------------------------------------------------------------- the generator
class Case:
    """One command line: options (flag -> values) built from valid ones, then broken."""

    def __init__(self, rng: random.Random, ws, n: int):
        self.rng, self.ws, self.n = rng, ws, n
        self.opts: dict[str, list[str]] = {}
        self.extra: list[str] = []

    def path(self, kind: str) -> str:
        """A path (or a text source name) that is wrong where it is given."""
        ws = self.ws
        return str({"missing": ws / "missing" / f"p{self.n}", "file": ws / "afile", "below_file": ws / "afile" / "sub",
                    "foreign": ws / "foreign", "dir": ws / "data", "empty": "", "missing_gguf": ws / "missing.gguf",
                    "missing_txt": ws / "missing.txt", "empty_txt": ws / "empty.txt"}.get(kind, kind))

    def yaml_file(self, content: str | bytes) -> str:
        p = self.ws / "inputs" / f"case-{self.n}.yaml"
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(p)

    def argv(self, command: list[str]) -> list[str]:
        items = list(self.opts.items())
        self.rng.shuffle(items)
        flat = [x for flag, values in items for x in (flag, *values)]
        return [*command, *flat, *self.extra]


def valid_noise(case: Case, choices: dict[str, list[list[str]]], k: int) -> None:
    for flag in case.rng.sample(sorted(choices), min(k, len(choices))):
        case.opts[flag] = case.rng.choice(choices[flag])


# each mistake is a function of the case: it sets, drops or adds options
def setter(flags: str | tuple[str, ...], values):
    """Set one of ``flags`` to one of ``values`` (a list, or a function of the case giving one)."""
    def mistake(c: Case) -> None:
        flag = flags if isinstance(flags, str) else c.rng.choice(flags)
        c.opts[flag] = [c.rng.choice(values(c) if callable(values) else values)]
    return mistake


def drop(*flags: str):
    return lambda c: [c.opts.pop(f, None) for f in flags]


def extra(*tokens: str):
    return lambda c: c.extra.append(c.rng.choice(tokens))


def bad_path(*kinds: str):
    return lambda c: [c.path(k) for k in kinds]


def both(*mistakes):
    return lambda c: [m(c) for m in mistakes]


def apply(case: Case, mistakes: list, focus: list = ()) -> None:
    """One to three of ``mistakes``; a third of the time one of ``focus`` alone (the checks that
    come last: with an earlier mistake beside them they would not be reached)."""
    chosen = [case.rng.choice(focus)] if focus and case.rng.random() < 0.35 else \
        case.rng.sample(mistakes, case.rng.choice((1, 1, 2, 3)))
    for mistake in chosen:
        mistake(case)


BAD_INT = ["abc", "1.5", "", "1e3", "0x10"]  # argparse refuses these for type=int
BAD_POSITIVE = ["0", "-1", "-64"]  # the commands refuse these
MODEL_NOISE = {"--dtype": [["float32"], ["bfloat16"]], "--device": [["cpu"]], "--quick": [[]], "--bos": [["never"], ["auto"]]}
CALIBRATION_NOISE = {"--nsamples": [["4"], ["16"]], "--seqlen": [["32"], ["64"]], "--seed": [["0"], ["7"]],
                     "--batch-size": [["1"], ["2"]], "--calib": [["c4"], ["wikitext2"]]}
MODEL_MISTAKES = [
    setter("--model", bad_path("missing", "file", "foreign", "empty", "missing_gguf")),
    setter("--dtype", ["int8", "fp32", ""]),
    setter("--data-dir", bad_path("missing", "file", "below_file")),
    setter("--cache-dir", bad_path("file", "below_file")),
    drop("--model"),
    extra("--bogus", "--nsamples-typo=3", "stray"),
]
CALIBRATION_MISTAKES = [setter(("--nsamples", "--seqlen", "--seed", "--batch-size"), BAD_INT),
                        setter(("--nsamples", "--seqlen", "--batch-size"), BAD_POSITIVE)]
#: text sources that fail when opened, before the model loads (the data folder is empty)
BAD_SOURCE = bad_path("missing_txt", "empty_txt", "c4", "wikitext2")


def prune_case(case: Case) -> list[str]:
    rng, ws = case.rng, case.ws
    case.opts.update({"--model": [str(ws / "model")], "--data-dir": [str(ws / "data")], "--out": [str(ws / f"out{case.n}")]})
    if rng.random() < 0.6:
        case.opts["--method"] = [rng.choice(["wanda", "magnitude", "sparsegpt", "ria"])]
    else:
        case.opts["--plan"] = [str(ws / "plan.yaml")]
    valid_noise(case, {**MODEL_NOISE, **CALIBRATION_NOISE, "--mode": [["one-shot"], ["sequential"]], "--update": [["none"]],
                       "--no-eval": [[]], "--kl": [[]], "--no-cache": [[]], "--eval-seqlen": [["64"]], "--offload": [["none"]],
                       "--no-memory-check": [[]]}, rng.randint(0, 5))
    plan_file = setter("--plan", lambda c: [c.yaml_file(malformed(c.rng, PLAN, PLAN_MISTAKES))])
    focus = [both(drop("--method"), plan_file),
             both(drop("--plan"), setter("--method", ["wanda"]), drop("--update"), setter("--calib", BAD_SOURCE)),
             both(drop("--no-eval"), setter("--eval", BAD_SOURCE))]
    apply(case, MODEL_MISTAKES + CALIBRATION_MISTAKES + focus + [
        setter("--out", bad_path("file", "below_file", "foreign")),
        drop("--out"),
        drop("--method", "--plan"),
        lambda c: c.opts.update({"--method": ["wanda"], "--plan": [str(ws / "plan.yaml")]}),
        both(drop("--plan"), setter("--method", ["wandaa", "nosuch", ""])),
        both(drop("--method"), setter("--plan", bad_path("missing", "dir", "below_file"))),
        setter("--sparsity", ["-0.1", "1", "1.5", "nan", "inf", "-inf", "abc", ""]),
        setter("--pattern", ["3:2", "x", "2:4:8", "0:4", "4:4", ":", "-2:4"]),
        lambda c: c.opts.update({"--sparsity": ["0.5"], "--pattern": ["2:4"]}),
        setter(("--mode", "--update", "--refine", "--permute", "--offload", "--bos"), ["bogus", "", "NONE"]),
        setter("--offload-folder", bad_path("file", "below_file")),
        setter(("--eval-seqlen", "--eval-windows"), BAD_INT + BAD_POSITIVE),
        both(drop("--no-eval"), setter("--eval", [",", " , ", ",,"])),
    ], focus)
    return case.argv(["prune"])


def eval_case(case: Case) -> list[str]:
    rng, ws = case.rng, case.ws
    case.opts.update({"--model": [str(ws / "model")], "--data-dir": [str(ws / "data")]})
    valid_noise(case, {**MODEL_NOISE, "--seqlen": [["64"]], "--windows": [["2"]], "--zero-shot-batch-size": [["4"]]},
                rng.randint(0, 4))
    focus = [setter("--data", BAD_SOURCE)]
    apply(case, MODEL_MISTAKES + focus + [
        setter(("--seqlen", "--windows", "--zero-shot-batch-size"), BAD_INT),
        setter(("--seqlen", "--windows"), BAD_POSITIVE),
        setter("--data", [",", " , "]),
        setter("--zero-shot", ["nosuch", "piqa,nosuch", ",", "all,x"]),
        both(setter("--zero-shot", ["piqa"]), setter(("--zero-shot-limit", "--zero-shot-batch-size"), BAD_POSITIVE)),
        both(drop("--zero-shot"), lambda c: c.opts.update(rng.choice([{"--zero-shot-limit": ["5"]}, {"--backend": ["lm-eval"]}]))),
        setter("--backend", ["bogus", ""]),
        setter("--json", bad_path("dir", "below_file", "foreign")),
        setter("--kl-dense", bad_path("missing", "file", "foreign")),
    ], focus)
    return case.argv(["eval"])


def stats_case(case: Case) -> list[str]:
    case.opts.update({"--model": [str(case.ws / "model")], "--data-dir": [str(case.ws / "data")]})
    valid_noise(case, {**MODEL_NOISE, **CALIBRATION_NOISE, "--gram": [[]]}, case.rng.randint(0, 4))
    focus = [setter("--calib", BAD_SOURCE)]
    apply(case, MODEL_MISTAKES + CALIBRATION_MISTAKES + focus, focus)
    return case.argv(["stats"])


def search_case(case: Case) -> list[str]:
    rng, ws = case.rng, case.ws
    case.opts.update({"--config": [str(ws / "search.yaml")], "--out": [str(ws / f"run{case.n}")]})
    valid_noise(case, {"--trials": [["3"]], "--timeout": [["10"]], "--seed": [["1"]], "--no-final": [[]],
                       "--executor": [["local"]], "--offload": [["none"]], "--data-dir": [[str(ws / "data")]],
                       "--model": [[str(ws / "model")]]}, rng.randint(0, 4))
    focus = [setter("--config", lambda c: [c.yaml_file(malformed(c.rng, search_config(ws), CONFIG_MISTAKES, c))])]
    apply(case, focus + [
        setter("--config", bad_path("missing", "dir", "below_file")),
        setter("--out", bad_path("file", "below_file", "foreign")),
        setter("--model", bad_path("missing", "file", "foreign", "empty")),
        setter("--data-dir", bad_path("missing", "file", "below_file")),
        setter(("--trials", "--seed", "--concurrent"), BAD_INT),
        setter(("--trials", "--concurrent"), BAD_POSITIVE),
        setter("--timeout", ["-5", "0", "nan", "abc", "-inf"]),
        setter(("--executor", "--offload"), ["bogus", "", "gpu"]),
        setter("--storage", ["not a url", "nosuchdb://x", "sqlite:////no/such/dir/s.db", f"sqlite:///{ws / 'afile' / 's.db'}"]),
        extra("--bogus", "stray", "--trials"),
    ], focus)
    return case.argv(["search"])


def report_case(case: Case) -> list[str]:
    rng, ws = case.rng, case.ws
    folder = rng.choice([case.path(k) for k in ("missing", "file", "foreign", "dir")] +
                        [str(p) for p in sorted((ws / "runs").iterdir())])
    return ["report", folder] + ([rng.choice(["--bogus", "extra"])] if rng.random() < 0.2 else [])


def other_case(case: Case) -> list[str]:
    return case.rng.choice([[], ["nosuchcommand"], ["--bogus"], ["prune"], ["search", "--trials"], ["eval", "--model"],
                            ["report"], ["stats", "--quick"]])


GENERATORS = [(prune_case, 5), (search_case, 4), (eval_case, 3), (stats_case, 2), (report_case, 1), (other_case, 1)]


def cases(ws, seed: int, count: int):
    rng = random.Random(seed)
    makers = [g for g, weight in GENERATORS for _ in range(weight)]
    for n in range(count):
        yield n, rng.choice(makers)(Case(rng, ws, n))


# ----------------------------------------------------------------------------- the test
@pytest.fixture
def ws(tmp_path, monkeypatch):
    """The refusal tests' workspace (cli_checks.workspace) with search folders to report on; loading
    a model, starting a search and reaching the hub raise ReachedLoad."""
    workspace(tmp_path, monkeypatch)
    for folder in ("inputs", "runs/nostudy"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "runs" / "nostudy" / "config.yaml").write_text(yaml.safe_dump(search_config(tmp_path)))
    for name, content in (("broken", b"space: [\n"), ("binary", b"\xff\xfe\x00"), ("list", b"- a\n"), ("bad-field", b"modle: x\n")):
        (tmp_path / "runs" / name).mkdir()
        (tmp_path / "runs" / name / "config.yaml").write_bytes(content)

    def reached(*args, **kwargs):
        raise ReachedLoad()

    for target in ("automl_prune.models.loading.load_model", "automl_prune.search.run.load_search",
                   "automl_prune.data.sources._hub"):
        monkeypatch.setattr(target, reached)
    return tmp_path


def test_fuzzed_command_lines_are_refused_in_one_line_with_nothing_written(ws, capsys):
    failures, kinds = [], {}
    for n, argv in cases(ws, SEED, CASES):
        before = snapshot(ws)
        code, out, err = run_cli(argv, capsys)
        reached = code == "raised" and "ReachedLoad" in err
        problem = ("valid: it got as far as loading" if reached else refusal_problem(code, out, err)) or \
            ("it wrote " + ", ".join(sorted(set(snapshot(ws)) ^ set(before)) or "into existing files")
             if snapshot(ws) != before else None)
        if problem:
            failures.append(f"case {n}: {problem}: automl-prune {' '.join(map(repr, argv))}\n{err.strip()[-1500:]}")
        kinds[argv[0] if argv else "-"] = kinds.get(argv[0] if argv else "-", 0) + 1
    assert sum(kinds.values()) == CASES and (CASES >= 500 or "AUTOML_PRUNE_FUZZ_CASES" in os.environ)
    assert not failures, f"{len(failures)} of {CASES} cases (seed {SEED}, {kinds}):\n\n" + "\n\n".join(failures[:15])
