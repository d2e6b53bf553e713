"""Helpers of the command-line refusal tests (test_cli_paths.py, test_cli_fuzz.py): run ``main`` in
this process, check that it refused in one line, and that nothing was written.

The rule for a refusal: exit code 2; no "Traceback" in stdout or stderr; the last non-empty line of
stderr is the error, ``automl-prune: error: ...`` or ``automl-prune CMD: error: ...``, and all
stderr holds before it is argparse's usage text (``usage: ...`` and its indented continuation
lines; our own errors come alone). Stdout may hold what was printed before the refusal (the memory
model's figures), never an error."""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

from automl_prune.cli import main

ERROR_LINE = re.compile(r"^automl-prune(?: [\w-]+)?: error: \S")


def run_cli(argv: list[str], capsys) -> tuple[object, str, str]:
    """``main(argv)`` in this process: (exit code, stdout, stderr); an exception escaping ``main``
    (what a user would see as a traceback) comes back as the code ``"raised"`` with its traceback
    in stderr."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    except Exception:  # noqa: BLE001 - reported, not raised: the caller names the case
        out, err = capsys.readouterr()
        return "raised", out, err + traceback.format_exc()
    out, err = capsys.readouterr()
    return code, out, err


def refusal_problem(code, out: str, err: str) -> str | None:
    """What breaks the refusal rule above (None: a proper refusal)."""
    if "Traceback" in out + err:
        return "a traceback"
    if code != 2:
        return f"exit code {code}, not 2"
    lines = [line for line in err.splitlines() if line.strip()]
    if not lines or not ERROR_LINE.match(lines[-1]):
        return "stderr does not end with an error line"
    if not all(line.startswith(("usage:", " ")) for line in lines[:-1]):
        return "more on stderr than argparse's usage and the error line"
    if re.search(r"(?im)^.*\berror\b", out):
        return "an error on stdout"
    return None


def assert_refused(argv: list[str], capsys, *expected: str) -> str:
    """``argv`` is refused as the rule says, with every ``expected`` text in the error; returns it."""
    code, out, err = run_cli(argv, capsys)
    problem = refusal_problem(code, out, err)
    assert problem is None, f"{problem}: automl-prune {' '.join(argv)}\nstdout: {out}\nstderr: {err}"
    line = err.strip().splitlines()[-1]
    for text in expected:
        assert text in line, f"{text!r} not in {line!r}"
    return line


def snapshot(root: Path) -> dict:
    """Every path under ``root`` with its kind, size and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(folder, name)
            st = p.lstat()
            found[str(p.relative_to(root))] = (p.is_dir(), st.st_size, st.st_mtime_ns)
    return found


PLAN = {"metric": {"name": "wanda"}, "sparsity": 0.5}
SPACE = {"metric": {"name": "bawa"}, "allocation": "uniform", "pattern": {"name": "unstructured", "sparsity": 0.5}}


def search_config(ws: Path) -> dict:
    """A valid search config over the workspace's model and (empty) data folder."""
    return dict(model=str(ws / "model"), data_dir=str(ws / "data"), calibration=dict(source="c4", nsamples=8, seqlen=64),
                heldout=dict(source="c4", seqlen=64, windows=2), space=SPACE, objectives=[dict(name="layer_recon")],
                searcher=dict(name="tpe", seed=0), budget=dict(trials=2))


def workspace(root: Path, monkeypatch) -> Path:
    """A folder for refusal tests, the current folder its ``cwd/`` (a default output folder would
    land inside): ``model/`` passes every check made before loading, ``data/`` is empty (every
    text source fails when opened), ``afile`` is a plain file, ``empty.txt`` an empty one,
    ``foreign/`` another tool's folder, ``plan.yaml`` and ``search.yaml`` are valid."""
    import yaml

    monkeypatch.delenv("AUTOML_PRUNE_DATA_DIR", raising=False)
    config_only_model(root / "model")
    for folder in ("data", "foreign", "cwd"):
        (root / folder).mkdir()
    (root / "afile").write_text("a file\n")
    (root / "empty.txt").write_text("")
    (root / "foreign" / "notes.txt").write_text("another tool's\n")
    (root / "plan.yaml").write_text(yaml.safe_dump(PLAN))
    (root / "search.yaml").write_text(yaml.safe_dump(search_config(root)))
    monkeypatch.chdir(root / "cwd")
    return root


def config_only_model(folder: Path) -> Path:
    """A model folder that passes every check made before loading (config.json of a tiny Llama) and
    holds no weights: a command that got as far as loading it would fail."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64).save_pretrained(folder)
    return folder
