"""Every path argument of every subcommand is checked before anything is read or loaded: an existing
file where a folder is wanted, a folder that cannot be created or written, a folder holding another
tool's files, a missing input. One line, exit 2, nothing written (cli/paths.py)."""

from __future__ import annotations

import os

import pytest
import yaml
from cli_checks import assert_refused, run_cli, search_config, snapshot, workspace

from automl_prune.cli import paths
from automl_prune.errors import UserError


@pytest.fixture
def ws(tmp_path, monkeypatch):
    return workspace(tmp_path, monkeypatch)


def base(ws, command: str) -> list[str]:
    """A command line that would go on to load the model (each test adds the one mistake)."""
    model = ["--model", str(ws / "model"), "--data-dir", str(ws / "data")]
    return {"prune": ["prune", *model, "--method", "wanda", "--out", str(ws / "pruned")],
            "search": ["search", "--config", str(ws / "search.yaml"), "--out", str(ws / "run")],
            "eval": ["eval", *model], "stats": ["stats", *model]}[command]


def refused(ws, capsys, argv, *expected):
    """``argv`` refused in one line naming ``expected``, and nothing written under ``ws``."""
    before = snapshot(ws)
    line = assert_refused(argv, capsys, *expected)
    assert snapshot(ws) == before, f"written by: {argv}"
    return line


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag`` set to ``value`` (replaced when present)."""
    if flag in argv:
        i = argv.index(flag)
        return [*argv[:i + 1], value, *argv[i + 2:]]
    return [*argv, flag, value]


# ----------------------------------------------------------------------------- output folders
@pytest.mark.parametrize("command", ["prune", "search"])
def test_out_an_existing_file_is_refused(ws, capsys, command):
    """The issue's two tracebacks: search --out FILE (FileExistsError), prune --out FILE (NotADirectoryError)."""
    refused(ws, capsys, with_option(base(ws, command), "--out", str(ws / "afile")), "--out", "is a file, not a folder")


@pytest.mark.parametrize("command", ["prune", "search"])
def test_out_below_a_file_is_refused(ws, capsys, command):
    refused(ws, capsys, with_option(base(ws, command), "--out", str(ws / "afile" / "deeper" / "out")),
            "cannot be created", "afile is a file")


@pytest.mark.parametrize("command, what", [("prune", "export"), ("search", "search folder")])
def test_out_holding_another_tools_files_is_refused(ws, capsys, command, what):
    refused(ws, capsys, with_option(base(ws, command), "--out", str(ws / "foreign")), "holds other files", what)


def test_search_default_out_is_checked_too(ws, capsys):
    (ws / "cwd" / "runs").write_text("a file where the runs folder goes\n")
    argv = [a for a in base(ws, "search") if a not in ("--out", str(ws / "run"))]
    refused(ws, capsys, argv, "--out", "runs")


def test_search_and_export_folders_are_not_crossed(ws, capsys):
    """An export is not a search folder, nor the reverse; each accepts its own (and an empty folder)."""
    (ws / "export").mkdir()
    (ws / "export" / "plan.yaml").write_text("metric: {name: wanda}\nsparsity: 0.5\n")
    (ws / "run").mkdir()
    (ws / "run" / "config.yaml").write_text("{}\n")
    (ws / "empty").mkdir()
    refused(ws, capsys, with_option(base(ws, "search"), "--out", str(ws / "export")), "not an automl-prune search folder")
    refused(ws, capsys, with_option(base(ws, "prune"), "--out", str(ws / "run")), "not an automl-prune export")
    for folder, marks in (("export", paths.EXPORT), ("run", paths.SEARCH), ("empty", paths.EXPORT), ("empty", paths.SEARCH),
                          ("new/deeper", paths.EXPORT)):
        paths.check_out_dir(ws / folder, "--out", marks=marks)


def test_unwritable_folders_are_refused(ws, capsys, monkeypatch):
    """A folder the user cannot write (simulated: paths.can_write says no, as os.access would for a
    non-root user; the tests may run as root, who may write anywhere)."""
    locked = ws / "locked"
    (locked / "sub").mkdir(parents=True)
    real = paths.can_write
    monkeypatch.setattr(paths, "can_write", lambda p: False if str(p).startswith(str(locked)) else real(p))
    refused(ws, capsys, with_option(base(ws, "prune"), "--out", str(locked / "new")), "locked is not writable")
    refused(ws, capsys, with_option(base(ws, "search"), "--out", str(locked / "sub")), "sub is not writable")
    refused(ws, capsys, [*base(ws, "eval"), "--json", str(locked / "r.json")], "--json", "not writable")
    refused(ws, capsys, [*base(ws, "stats"), "--cache-dir", str(locked / "cache")], "--cache-dir", "not writable")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into any folder")
def test_unwritable_folder_for_real(ws, capsys):
    locked = ws / "locked"
    locked.mkdir(mode=0o500)
    try:
        refused(ws, capsys, with_option(base(ws, "prune"), "--out", str(locked / "new")), "not writable")
    finally:
        locked.chmod(0o700)


def test_an_existing_export_is_accepted_but_its_parent_must_be_writable(ws, monkeypatch):
    """An export is replaced by renaming a new folder in beside it: its parent is written too."""
    (ws / "export").mkdir()
    (ws / "export" / "plan.yaml").write_text("{}\n")
    paths.check_out_dir(ws / "export", "--out", marks=paths.EXPORT)
    real = paths.can_write
    monkeypatch.setattr(paths, "can_write", lambda p: False if str(p) == str(ws) else real(p))
    with pytest.raises(UserError, match="is not writable"):
        paths.check_out_dir(ws / "export", "--out", marks=paths.EXPORT)


# ----------------------------------------------------------------------------- inputs
@pytest.mark.parametrize("command", ["prune", "eval", "stats", "search"])
@pytest.mark.parametrize("where, expected", [("missing-data", "does not exist"), ("afile", "is a file, not a folder")])
def test_data_dir_must_be_a_folder(ws, capsys, command, where, expected):
    refused(ws, capsys, with_option(base(ws, command), "--data-dir", str(ws / where)), "--data-dir", expected)


@pytest.mark.parametrize("command", ["prune", "eval", "stats", "search"])
@pytest.mark.parametrize("where, expected", [
    ("missing/model", "No such file or folder"),
    ("afile", "is a file but not a .gguf file"),
    ("foreign", "not a Hugging Face model folder (no config.json)"),
    ("missing.gguf", "No such file or folder"),
])
def test_model_path_is_checked(ws, capsys, command, where, expected):
    refused(ws, capsys, with_option(base(ws, command), "--model", str(ws / where)), "--model", expected)


def test_kl_dense_model_is_checked(ws, capsys):
    refused(ws, capsys, [*base(ws, "eval"), "--kl-dense", str(ws / "afile")], "--kl-dense", "not a .gguf")


@pytest.mark.parametrize("flag, command", [("--plan", "prune"), ("--config", "search")])
@pytest.mark.parametrize("content, expected", [
    (None, "does not exist"),
    ("folder", "is a folder, not a file"),
    (b"\xff\xfe\x00binary", "not a text file"),
    ("metric: [wanda\nsparsity: 0.5\n", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
    ("", "must hold a mapping"),
])
def test_yaml_inputs_are_checked(ws, capsys, flag, command, content, expected):
    path = ws / "input.yaml"
    if content == "folder":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    argv = base(ws, command)
    argv = with_option([a for a in argv if a not in ("--method", "wanda")], flag, str(path))
    line = refused(ws, capsys, argv, flag, expected)
    if "YAML" in expected:
        assert "line 2" in line  # where the parser gave up, on the one line


def test_config_paths_are_checked_as_the_config_names_them(ws, capsys):
    for field, value, expected in (("model", str(ws / "no" / "model"), "model of bad.yaml"),
                                   ("data_dir", str(ws / "afile"), "data_dir of bad.yaml"),
                                   ("cache_dir", str(ws / "afile"), "cache_dir of bad.yaml")):
        (ws / "bad.yaml").write_text(yaml.safe_dump({**search_config(ws), field: value}))
        refused(ws, capsys, with_option(base(ws, "search"), "--config", str(ws / "bad.yaml")), expected)


def test_data_dir_from_the_environment_is_checked(ws, capsys, monkeypatch):
    monkeypatch.setenv("AUTOML_PRUNE_DATA_DIR", str(ws / "gone"))
    refused(ws, capsys, ["search", "--config", str(ws / "search.yaml"), "--out", str(ws / "run")], "gone", "does not exist")


@pytest.mark.parametrize("flag", ["--cache-dir", "--offload-folder"])
def test_working_folders_must_be_folders(ws, capsys, flag):
    refused(ws, capsys, [*base(ws, "prune"), flag, str(ws / "afile")], flag, "is a file, not a folder")


@pytest.mark.parametrize("where, expected", [("foreign", "is a folder"), ("afile/r.json", "afile is a file")])
def test_eval_json_must_be_a_writable_file(ws, capsys, where, expected):
    refused(ws, capsys, [*base(ws, "eval"), "--json", str(ws / where)], "--json", expected)


# ----------------------------------------------------------------------------- report
def test_report_folder_is_checked(ws, capsys):
    refused(ws, capsys, ["report", str(ws / "missing")], "not a search folder")
    refused(ws, capsys, ["report", str(ws / "afile")], "not a search folder")
    refused(ws, capsys, ["report", str(ws / "foreign")], "not a search folder")
    (ws / "run").mkdir()
    (ws / "run" / "config.yaml").write_text("space: [\n")
    refused(ws, capsys, ["report", str(ws / "run")], "not valid YAML")
    (ws / "run" / "config.yaml").write_text(yaml.safe_dump(search_config(ws)))
    refused(ws, capsys, ["report", str(ws / "run")], "holds no study")  # and no empty study.db left behind


def test_a_multiline_message_is_printed_on_one_line(capsys, monkeypatch):
    from automl_prune.cli import search_cmd

    def fail(args):
        raise UserError("first\n  second\n")

    monkeypatch.setattr(search_cmd, "run_report", fail)
    code, _, err = run_cli(["report", "x"], capsys)
    assert code == 2 and err == "automl-prune: error: first; second\n"
