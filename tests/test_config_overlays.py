"""Config overlays (``extends:``) and the packaged quickstart: a config is its base's settings with
its own merged on top (mappings key by key, lists replaced), bases of bases included; a missing
base or a cycle is one line and exit code 2 on the command line. Every shipped config resolves to
one complete config (the one a run folder's config.yaml records)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cli_checks import assert_refused

from automl_prune.errors import UserError
from automl_prune.search.study.config import _merge, load_config, preset, preset_names
from automl_prune.search.study.fingerprint import digest, study_fingerprint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: bases (``base-*.yaml``) hold what several configs share; they need not be complete studies
STUDIES = sorted(p for p in CONFIGS.glob("*.yaml") if not p.name.startswith("base-"))
#: the quickstart's study fingerprint (search/study/fingerprint.py) since before it was packaged:
#: a quickstart run folder of an earlier version resumes only while this holds
QUICKSTART_DIGEST = "0aff07e46bfa59c0"


def _write(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def test_merge_merges_mappings_key_by_key_and_replaces_lists_and_scalars():
    base = {"a": {"x": 1, "y": [1, 2], "z": {"deep": 1, "keep": 2}}, "b": [1, 2], "c": {"m": 1}}
    over = {"a": {"y": [3], "z": {"deep": 5}, "new": 0}, "b": [9], "c": "scalar"}
    assert _merge(base, over) == {"a": {"x": 1, "y": [3], "z": {"deep": 5, "keep": 2}, "new": 0}, "b": [9], "c": "scalar"}
    assert list(_merge(base, over)["a"]) == ["x", "y", "z", "new"]  # the base's key order, new keys after
    assert base["a"]["z"] == {"deep": 1, "keep": 2}  # the base is not changed


def test_an_overlay_changes_what_it_names_and_keeps_the_rest_of_its_base(tmp_path):
    _write(tmp_path / "bases", "base.yaml", {
        "probe": {"nsamples": 4, "seqlen": 256},
        "space": {"metric": {"name": "bawa"}, "allocation": "uniform", "pattern": {"name": "unstructured", "sparsity": 0.5}},
        "budget": {"trials": 10, "timeout": 100},
        "final": {"baselines": ["wanda", "ria"], "top": 2}})
    _write(tmp_path / "bases", "middle.yaml", {"extends": "base", "budget": {"trials": 20}})
    config = _write(tmp_path / "studies", "study.yaml", {
        "extends": "../bases/middle.yaml", "space": {"pattern": {"sparsity": 0.6}}, "final": {"baselines": ["magnitude"]}})
    c = load_config(config)
    assert c.space["pattern"] == {"name": "unstructured", "sparsity": 0.6}  # merged into the base's mapping
    assert c.space["metric"] == {"name": "bawa"} and c.space["allocation"] == "uniform"
    assert c.final.baselines == ["magnitude"] and c.final.top == 2  # the list replaced, the rest kept
    assert (c.budget.trials, c.budget.timeout) == (20, 100)  # the middle's value, the base's timeout
    assert (c.probe.nsamples, c.probe.seqlen) == (4, 256)
    # overrides (the command line's) apply to the resolved config
    assert load_config(config, {"budget.trials": 3, "space.pattern.sparsity": 0.7}).space["pattern"]["sparsity"] == 0.7
    # what a run folder records is the resolved config: it loads alone, without its bases
    assert load_config(_write(tmp_path / "run", "config.yaml", c.model_dump(mode="json"))) == c


def test_a_bare_name_is_a_file_beside_the_config_else_a_preset(tmp_path):
    assert "quickstart" in preset_names()
    quick = load_config(preset("quickstart"))
    c = load_config(_write(tmp_path, "mine.yaml", {"extends": "quickstart", "budget": {"trials": 5}}))
    assert c.budget.trials == 5 and c.budget.timeout == quick.budget.timeout
    assert c.model_dump(exclude={"budget"}) == quick.model_dump(exclude={"budget"})
    _write(tmp_path, "quickstart.yaml", {"budget": {"trials": 7}})  # a file beside the config comes first
    c = load_config(tmp_path / "mine.yaml")
    assert c.budget.trials == 5 and c.calibration.source != "wiki-offline"


def test_a_missing_base_is_one_line_and_exit_code_2(tmp_path, capsys):
    config = _write(tmp_path, "study.yaml", {"extends": "no-such-base"})
    with pytest.raises(UserError, match="no config 'no-such-base'") as err:
        load_config(config)
    assert "\n" not in str(err.value) and "study.yaml" in str(err.value) and "quickstart)" in str(err.value)
    missing_path = _write(tmp_path, "other.yaml", {"extends": "bases/gone.yaml"})
    with pytest.raises(UserError, match="gone.yaml, does not exist"):
        load_config(missing_path)
    with pytest.raises(UserError, match="must name the config it extends"):
        load_config(_write(tmp_path, "bad.yaml", {"extends": ["a", "b"]}))
    assert_refused(["search", "--config", str(config), "--out", str(tmp_path / "out")], capsys,
                   "field 'extends'", "no-such-base")
    assert not (tmp_path / "out").exists()


def test_a_cycle_of_bases_is_one_line_and_exit_code_2(tmp_path, capsys):
    _write(tmp_path, "a.yaml", {"extends": "b", "budget": {"trials": 2}})
    _write(tmp_path, "b.yaml", {"extends": "c.yaml"})
    _write(tmp_path, "c.yaml", {"extends": "./a.yaml"})
    with pytest.raises(UserError, match=r"makes a cycle: a\.yaml -> b\.yaml -> c\.yaml -> a\.yaml"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(UserError, match=r"cycle: self\.yaml -> self\.yaml"):
        load_config(_write(tmp_path, "self.yaml", {"extends": "self"}))
    assert_refused(["search", "--config", str(tmp_path / "a.yaml"), "--out", str(tmp_path / "out")], capsys, "cycle")


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_config_resolves_to_a_valid_study(path):
    config = load_config(path)
    assert config.objectives and (config.budget.trials or config.budget.timeout)


def test_the_shipped_configs_are_overlays_on_bases_that_exist():
    bases = {p.name for p in CONFIGS.glob("base-*.yaml")}
    assert bases, "configs/ holds its bases as base-*.yaml"
    for path in CONFIGS.glob("*.yaml"):
        ref = (yaml.safe_load(path.read_text()) or {}).get("extends")
        assert ref is None or (CONFIGS / f"{ref}.yaml").is_file(), f"{path.name} extends {ref!r}"


def test_joint_60_differs_from_joint_50_in_the_target_only():
    a = _flat(load_config(CONFIGS / "joint-50-update.yaml").model_dump(mode="json"))
    b = _flat(load_config(CONFIGS / "joint-60-update.yaml").model_dump(mode="json"))
    assert a.keys() == b.keys()
    assert {k: (a[k], b[k]) for k in a if a[k] != b[k]} == {"space.pattern.sparsity": (0.5, 0.6)}


def test_the_quickstart_is_packaged_and_keeps_its_study():
    """``automl-prune search`` without --config runs the packaged quickstart into runs/quickstart,
    the same study (fingerprint) as before it was packaged, so an existing run resumes."""
    from automl_prune.cli.search_cmd import DEFAULT_CONFIG

    assert DEFAULT_CONFIG.is_file() and Path(DEFAULT_CONFIG.name).stem == "quickstart"
    assert DEFAULT_CONFIG.read_text() == preset("quickstart").read_text()
    assert not (CONFIGS / "quickstart.yaml").exists()  # one copy: the package's
    config = load_config(DEFAULT_CONFIG)
    assert config.study_name is None  # the default study name, as before
    assert digest(study_fingerprint(config)) == QUICKSTART_DIGEST
