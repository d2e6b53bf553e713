"""Every path argument of the command line, checked before anything is read or loaded: each
mistake is a UserError (one line, exit 2) that says what is wrong with the path and what to pass.

``check(args, ...)`` is what the subcommands call: it checks each path option the command has
(by its ``args`` attribute), and the output folders the command names with what marks a folder as
its own (an export holds plan.yaml, a search folder config.yaml or its study.db)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import yaml

from ..errors import UserError

#: what marks a folder as an automl-prune export (prune --out) or a search folder (search --out)
EXPORT = ("plan.yaml",)
SEARCH = ("config.yaml", "study.db")


def check(args: argparse.Namespace, **folders: tuple[str, ...]) -> None:
    """Check the path options of ``args``: the model specs, the YAML inputs, the data folder, the
    working folders and output file, and each output folder in ``folders`` (attribute -> marks;
    an existing non-empty folder must hold one of the marks, else it is another tool's)."""
    check_values(vars(args))
    for attr, marks in folders.items():
        if getattr(args, attr, None) is not None:
            check_out_dir(getattr(args, attr), _flag(attr), marks=marks)


def check_values(values: dict, name=None) -> None:
    """Check the path options among ``values`` (attribute -> value); ``name(attr)`` names one in
    the messages (default: its command-line flag)."""
    for attr, checker in _CHECKS.items():
        if values.get(attr) is not None:
            checker(values[attr], (name or _flag)(attr))


def _flag(attr: str) -> str:
    return "DIR" if attr == "dir" else "--" + attr.replace("_", "-")


def check_model(spec: str, flag: str = "--model") -> None:
    """A model spec that names a local path must be a .gguf file or a Hugging Face model folder."""
    from ..models.loading import check_model_spec  # deferred: torch loads only when a subcommand runs

    try:
        check_model_spec(spec)
    except UserError as exc:
        raise UserError(f"{flag}: {exc}") from None


def check_yaml_file(path: str | os.PathLike, flag: str) -> dict:
    """An existing, readable YAML file holding a mapping; returns the mapping."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{flag} {p} does not exist; pass the path of an existing YAML file")
    if not p.is_file():
        raise UserError(f"{flag} {p} is a folder, not a file; pass the path of a YAML file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{flag} {p} is not a text file (not UTF-8); pass a YAML file") from None
    except OSError as exc:
        raise UserError(f"{flag} {p} cannot be read ({exc.strerror}); check its permissions") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{flag} {p} is not valid YAML: {yaml_problem(exc)}; fix the file") from None
    if not isinstance(data, dict):
        raise UserError(f"{flag} {p} must hold a mapping of fields (name: value), not {type(data).__name__}")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error in one line: the problem and where it is."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    return problem + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def check_in_dir(path: str | os.PathLike, flag: str) -> None:
    """An existing folder to read from."""
    p = Path(path).expanduser()
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise UserError(f"{flag} {p} {what}; pass an existing folder")


def check_out_dir(path: str | os.PathLike, flag: str, *, marks: tuple[str, ...] = ()) -> None:
    """A folder to write into: an existing folder (empty, or holding one of ``marks`` when marks
    are given) or one that can be created; writable."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserError(f"{flag} {p} is a file, not a folder; pass a new or empty folder")
    if p.is_dir():
        if marks and any(p.iterdir()) and not any((p / m).exists() for m in marks):
            raise UserError(f"{flag} {p} holds other files and is not an automl-prune "
                            f"{'export' if marks == EXPORT else 'search folder'}; pass a new or empty folder")
        _writable(p, flag, p)
    if not p.exists() or marks == EXPORT:  # an export is renamed into place: its parent is written too
        _creatable(p, flag)


def check_out_file(path: str | os.PathLike, flag: str) -> None:
    """A file to write (``-``: standard output)."""
    if str(path) == "-":
        return
    p = Path(path).expanduser()
    if p.is_dir():
        raise UserError(f"{flag} {p} is a folder; pass a file path (or - for standard output)")
    if p.exists():
        _writable(p, flag, p)
    _creatable(p, flag)


def _creatable(p: Path, flag: str) -> None:
    """The nearest existing folder above ``p`` is a writable folder."""
    above = p.absolute().parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise UserError(f"{flag} {p} cannot be created: {above} is a file, not a folder; pass another path")
    _writable(above, flag, p)


def can_write(folder: Path) -> bool:
    """Whether this user may create entries in ``folder`` (the tests replace this one function)."""
    return os.access(folder, os.W_OK | (os.X_OK if folder.is_dir() else 0))


def _writable(folder: Path, flag: str, p: Path) -> None:
    if not can_write(folder):
        raise UserError(f"{flag} {p}: {folder} is not writable; pass a path you can write to")


#: the path options the subcommands share, by their ``args`` attribute
_CHECKS = {
    "model": check_model,
    "kl_dense": check_model,
    "plan": check_yaml_file,
    "config": check_yaml_file,
    "data_dir": check_in_dir,
    "cache_dir": check_out_dir,
    "offload_folder": check_out_dir,
    "json": check_out_file,
}
