"""Plans checked against the model before any work, and the explicit transfer to another model
(pruning/transfer.py, ``automl-prune prune --plan FILE --transfer metric|depth``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from automl_prune.cli import main
from automl_prune.errors import UserError
from automl_prune.pruning.masks import group_count
from automl_prune.pruning.plan import PruningPlan
from automl_prune.pruning.transfer import (check_plan, depth_profile, exact_allocation, layers_digest, model_record,
                                           pruned_count, transfer_plan)

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_PLAN = ROOT / "benchmarks" / "plans" / "selected-50.yaml"  # searched on SmolLM2-135M (30 blocks)


def _plan(**fields) -> PruningPlan:
    return PruningPlan.from_dict({"metric": "wanda", "sparsity": 0.5, **fields})


def _profile(kind: str, values: list[float]) -> dict[str, float]:
    return {f"{b}.{kind}": v for b, v in enumerate(values)}


# ----- pure functions ----------------------------------------------------------------------------------
def test_depth_profile_interpolates_by_relative_depth():
    up = {f"{b}.mlp.up_proj": (4, 10) for b in range(5)}
    # 3 source blocks onto 5: positions 0, 0.5, 1, 1.5, 2
    deeper = depth_profile(_plan(sparsity=0.4, layer_sparsity=_profile("mlp.up_proj", [0.2, 0.4, 0.8])), up, 3)
    assert list(deeper.values()) == pytest.approx([0.2, 0.3, 0.4, 0.6, 0.8])
    # 5 source blocks onto 3: positions 0, 2, 4; a kind the plan does not set takes the global target
    shallower = {**{f"{b}.mlp.up_proj": (4, 10) for b in range(3)}, "1.mlp.down_proj": (10, 4)}
    plan = _plan(sparsity=0.4, layer_sparsity=_profile("mlp.up_proj", [0.1, 0.2, 0.3, 0.4, 0.5]))
    assert depth_profile(plan, shallower, 5) == pytest.approx(
        {"0.mlp.up_proj": 0.1, "1.mlp.up_proj": 0.3, "2.mlp.up_proj": 0.5, "1.mlp.down_proj": 0.4})
    # one target block sits in the middle: between source blocks 1 and 2 of 4
    plan = _plan(layer_sparsity=_profile("mlp.up_proj", [0.1, 0.2, 0.4, 0.5]))
    assert depth_profile(plan, {"0.mlp.up_proj": (4, 10)}, 4) == pytest.approx({"0.mlp.up_proj": 0.3})
    # a per-block list is a profile of every kind
    assert depth_profile(_plan(sparsity=[0.2, 0.6]), {f"{b}.mlp.up_proj": (4, 10) for b in range(3)}, 2) == \
        pytest.approx({"0.mlp.up_proj": 0.2, "1.mlp.up_proj": 0.4, "2.mlp.up_proj": 0.6})


def test_exact_allocation_scales_then_fixes_the_remainder_by_whole_groups():
    shapes = {"0.a": (4, 10), "1.a": (4, 10)}  # per-row groups of 10 weights, 4 rows
    # scaled by 1.5 to the weighted target 0.45: 3 and 6 weights per row, 36 = round(0.45 * 80)
    assert exact_allocation({"0.a": 0.2, "1.a": 0.4}, shapes, _plan(), 0.45) == {"0.a": 0.3, "1.a": 0.6}
    # target 0.4 of 40 weights = 16: scaled 4/15 and 8/15 prune 2 and 5 per row (14); the 2 missing
    # weights go one per row to the layer the rounding cost most (0.667 per row against 0.333)
    shapes = {"0.a": (2, 10), "1.a": (2, 10)}
    assert exact_allocation({"0.a": 0.25, "1.a": 0.5}, shapes, _plan(), 0.4) == {"0.a": 0.3, "1.a": 0.5}
    # a per-matrix group (magnitude) moves one weight at a time: 14 = round(0.35 * 40); scaled by 14/15,
    # 7/30 and 7/15 of 20 weights prune 4 and 9 (13), the missing one goes to the first layer (0.667 lost)
    magnitude = _plan(metric="magnitude")
    layers = exact_allocation({"0.a": 0.25, "1.a": 0.5}, shapes, magnitude, 0.35)
    assert layers == {"0.a": 0.25, "1.a": 0.45}
    assert sum(pruned_count(shapes[n], magnitude, s) for n, s in layers.items()) == 14


def test_exact_allocation_hits_the_global_count_on_smollm2_shapes():
    """The SmolLM2 plan onto a 7-block model of SmolLM2's layer shapes: the count is exact, every
    layer's written value gives back its count, the clip holds, and the values follow the profile."""
    plan = PruningPlan.load(SMOLLM2_PLAN)
    kinds = {"self_attn.q_proj": (576, 576), "self_attn.k_proj": (192, 576), "self_attn.v_proj": (192, 576),
             "self_attn.o_proj": (576, 576), "mlp.gate_proj": (1536, 576), "mlp.up_proj": (1536, 576),
             "mlp.down_proj": (576, 1536)}
    shapes = {f"{b}.{k}": s for b in range(7) for k, s in kinds.items()}
    for target in (0.5, 0.6137):
        raw = depth_profile(plan, shapes, 30)
        layers = exact_allocation(raw, shapes, plan, target)
        total = sum(r * c for r, c in shapes.values())
        counts = {n: shapes[n][0] * group_count(shapes[n][1], s) for n, s in layers.items()}
        # exact at 0.5; at 0.6137 the count is no multiple of 192 (the rows' gcd): the nearest one
        assert abs(sum(counts.values()) - round(target * total)) <= (0 if target == 0.5 else 192 / 2)
        assert all(0 <= s <= 0.99 for s in layers.values())
        scale = target * total / sum(raw[n] * r * c for n, (r, c) in shapes.items())
        assert all(abs(layers[n] - scale * raw[n]) <= 1 / shapes[n][1] + 1e-9 for n in shapes)


def test_digest_and_record_depend_on_names_and_shapes_only():
    shapes = {"0.a": (2, 3), "1.a": (2, 3)}
    assert layers_digest(shapes) == layers_digest(dict(reversed(shapes.items())))
    assert layers_digest(shapes) != layers_digest({"0.a": (3, 2), "1.a": (2, 3)})
    assert model_record("m", shapes).model_dump() == {"name": "m", "blocks": 2, "layers_digest": layers_digest(shapes)}


def test_check_plan_names_the_unknown_layers_and_the_block_count():
    shapes = {f"{b}.{k}": (4, 4) for b in range(3) for k in ("self_attn.q_proj", "mlp.up_proj")}
    bad = _plan(layer_sparsity={"99.mlp.up_proj": 0.4, "0.mlp.up_prj": 0.6, "1.mlp.up_proj": 0.5})
    with pytest.raises(UserError) as err:
        check_plan(bad, shapes)
    msg = str(err.value)
    assert "2 layer(s)" in msg and "99.mlp.up_proj, 0.mlp.up_prj" in msg and "3 blocks" in msg
    assert "'0.self_attn.q_proj'" in msg and "--transfer" in msg
    many = _plan(layer_sparsity={f"{b}.mlp.up_proj": 0.5 for b in range(10)})
    with pytest.raises(UserError, match=r"7 layer\(s\).*and 3 more"):
        check_plan(many, shapes)
    with pytest.raises(UserError, match="2 per-block sparsities but the model has 3 blocks.*--transfer"):
        check_plan(_plan(sparsity=[0.4, 0.6]), shapes)
    assert check_plan(_plan(layer_sparsity={"2.mlp.up_proj": 0.7}), shapes) == []


def test_check_plan_compares_the_model_record():
    shapes = {f"{b}.mlp.up_proj": (4, 4) for b in range(3)}
    here = model_record("tiny", shapes).model_dump()
    assert check_plan(_plan(model=here), shapes, "tiny") == []
    assert check_plan(_plan(model={**here, "name": "elsewhere/tiny"}), shapes, "tiny")[0].startswith("note: the plan was made for elsewhere/tiny")
    with pytest.raises(UserError, match="made for other .30 blocks, layers 0123456789abcdef., not for tiny .3 blocks, layers .*--transfer metric"):
        check_plan(_plan(model={"name": "other", "blocks": 30, "layers_digest": "0123456789abcdef"}), shapes, "tiny")
    with pytest.raises(UserError, match="made for tiny .3 blocks, layers 0123456789abcdef"):
        check_plan(_plan(model={**here, "layers_digest": "0123456789abcdef"}), shapes, "tiny")
    assert check_plan(_plan(model={"blocks": 3}), shapes, "tiny") == []  # a hand-written record: the count alone


def test_provenance_fields_leave_plans_keys_and_settings_unchanged():
    text = SMOLLM2_PLAN.read_text()
    plan = PruningPlan.load(SMOLLM2_PLAN)
    assert plan.to_yaml() == text  # no record: quiet
    shapes = {f"{b}.mlp.up_proj": (4, 4) for b in range(3)}
    moved, _ = transfer_plan(plan, shapes, "metric", "tiny")
    assert moved.layer_settings() == plan.layer_settings()
    assert moved.to_dict()["transfer"] == {"kind": "metric", "source": {"blocks": 30}}
    assert PruningPlan.from_dict(yaml.safe_load(moved.to_yaml())) == moved


def test_transfer_kinds():
    shapes = {f"{b}.mlp.up_proj": (4, 10) for b in range(5)}
    plan = _plan(sparsity=0.4, layer_sparsity=_profile("mlp.up_proj", [0.2, 0.4, 0.8]), refine="dsnot")
    metric, _ = transfer_plan(plan, shapes, "metric", "x")
    assert metric.sparsity == 0.4 and metric.layer_sparsity == {} and metric.refine == "dsnot"
    assert metric.model.blocks == 5 and metric.transfer.source.blocks == 3
    depth, line = transfer_plan(plan, shapes, "depth", "x")
    # raw 0.2 0.3 0.4 0.6 0.8 scaled by 0.4 / 0.46 prunes 1 2 3 5 6 per row (68 of 80); the 3 missing
    # rows of weights go to blocks 4, 0 and 1, where the rounding cost most
    assert depth.layer_sparsity == _profile("mlp.up_proj", [0.2, 0.3, 0.3, 0.5, 0.7])
    assert "80 of 200 weights" in line and depth.transfer.kind == "depth"
    nm, line = transfer_plan(PruningPlan.from_dict({"metric": "ria", "pattern": "2:4"}), shapes, "depth", "x")
    assert nm.pattern == "2:4" and nm.layer_sparsity == {} and "no allocation" in line


# ----- the library and the command -----------------------------------------------------------------
def test_prune_model_refuses_a_plan_for_other_layers():
    from tiny_models import tiny_model

    from automl_prune.pruning.apply import prune_model

    model = tiny_model("llama")
    with pytest.raises(UserError, match="99.mlp.up_proj"):
        prune_model(model, PruningPlan.from_dict({"metric": "magnitude", "sparsity": 0.5,
                                                  "layer_sparsity": {"99.mlp.up_proj": 0.5}}), progress=False)


@pytest.fixture
def spied(monkeypatch):
    """Calls of the calibration text and the statistics capture (observed, not replaced)."""
    import automl_prune.data as data
    import automl_prune.pruning.apply as apply

    calls = []

    def observe(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: calls.append(name) or real(*a, **k))

    observe(data, "calibration_windows")
    observe(apply, "dense_statistics")
    observe(apply, "capture_statistics")
    return calls


def _prune(model_dir, plan, out, *extra, data_dir=None):
    return main(["prune", "--model", str(model_dir), "--device", "cpu", "--plan", str(plan), "--out", str(out),
                 "--data-dir", str(data_dir), "--nsamples", "4", "--seqlen", "64", "--no-eval", *extra])


def _zeros(folder) -> tuple[int, int]:
    """(zeros, weights) of the prunable layers of an exported model."""
    from automl_prune.models.adapters import decoder_blocks, prunable_linears
    from automl_prune.models.loading import load_model

    model = load_model(str(folder), device="cpu").model
    lins = [lin for b in decoder_blocks(model) for lin in prunable_linears(b).values()]
    return sum(int((lin.weight == 0).sum()) for lin in lins), sum(lin.weight.numel() for lin in lins)


def test_foreign_layer_names_are_refused_before_calibration(tiny_llama_dir, data_dir, tmp_path, capsys, spied):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"metric": {"name": "wanda"}, "sparsity": 0.5,
                                    "layer_sparsity": {"99.mlp.up_proj": 0.4, "0.mlp.up_prj": 0.6}}, sort_keys=False))
    assert _prune(tiny_llama_dir, plan, tmp_path / "out", data_dir=data_dir) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "99.mlp.up_proj, 0.mlp.up_prj" in err and "3 blocks" in err and "--transfer" in err
    assert spied == [] and not (tmp_path / "out").exists()


def test_a_plan_of_another_model_is_refused_then_transferred(tiny_llama_dir, data_dir, tmp_path, capsys, spied):
    from automl_prune.models.adapters import prunable_shapes
    from automl_prune.models.loading import load_model

    assert _prune(tiny_llama_dir, SMOLLM2_PLAN, tmp_path / "refused", data_dir=data_dir) == 2
    err = capsys.readouterr().err
    assert "189 layer(s)" in err and "3 blocks" in err and err.count("\n") == 1 and spied == []
    shapes = prunable_shapes(load_model(str(tiny_llama_dir), device="cpu").model)
    total = sum(r * c for r, c in shapes.values())
    source = PruningPlan.load(SMOLLM2_PLAN)

    # metric: the plan's method at 0.5, uniform
    assert _prune(tiny_llama_dir, SMOLLM2_PLAN, tmp_path / "metric", "--transfer", "metric", data_dir=data_dir) == 0
    assert "transfer (metric)" in capsys.readouterr().out and spied
    written = yaml.safe_load((tmp_path / "metric" / "plan.yaml").read_text())
    assert written["metric"] == source.to_dict()["metric"] and written["refine"] == "dsnot"
    assert written["sparsity"] == 0.5 and not written["layer_sparsity"]
    assert written["transfer"] == {"kind": "metric", "source": {"blocks": 30}}
    assert written["model"] == model_record(str(tiny_llama_dir), shapes).model_dump()
    zeros, weights = _zeros(tmp_path / "metric")
    assert weights == total and zeros == total // 2

    # depth: the per-layer targets of the source's depth profile, the exact global count
    assert _prune(tiny_llama_dir, SMOLLM2_PLAN, tmp_path / "depth", "--transfer", "depth", data_dir=data_dir) == 0
    capsys.readouterr()
    written = yaml.safe_load((tmp_path / "depth" / "plan.yaml").read_text())
    assert written["transfer"]["kind"] == "depth" and written["model"]["blocks"] == 3
    layers = written["layer_sparsity"]
    assert layers == transfer_plan(source, shapes, "depth", str(tiny_llama_dir))[0].layer_sparsity
    raw = depth_profile(source, shapes, 30)
    scale = 0.5 * total / sum(raw[n] * r * c for n, (r, c) in shapes.items())
    assert all(abs(layers[n] - scale * raw[n]) <= 1 / shapes[n][1] + 1e-9 for n in shapes)
    for kind in ("self_attn.k_proj", "mlp.up_proj"):  # first on first, last on last
        assert raw[f"0.{kind}"] == source.layer_sparsity[f"0.{kind}"]
        assert raw[f"2.{kind}"] == source.layer_sparsity[f"29.{kind}"]
    assert _zeros(tmp_path / "depth") == (round(0.5 * total), total)

    # the exported plan records this model: re-applied to it as it is, and under another name with a note
    assert _prune(tiny_llama_dir, tmp_path / "depth" / "plan.yaml", tmp_path / "again", data_dir=data_dir) == 0
    assert "note:" not in capsys.readouterr().out
    alias = tmp_path / "same-model"
    alias.symlink_to(tiny_llama_dir)
    assert _prune(alias, tmp_path / "depth" / "plan.yaml", tmp_path / "aliased", data_dir=data_dir) == 0
    assert "note: the plan was made for" in capsys.readouterr().out
    assert _zeros(tmp_path / "again") == _zeros(tmp_path / "aliased") == (round(0.5 * total), total)


def test_a_record_of_another_model_is_refused(tiny_llama_dir, data_dir, tmp_path, capsys, spied):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"metric": {"name": "wanda"}, "sparsity": 0.5,
                                    "model": {"name": "smollm2-135m", "blocks": 3, "layers_digest": "0123456789abcdef"}}))
    assert _prune(tiny_llama_dir, plan, tmp_path / "out", data_dir=data_dir) == 2
    err = capsys.readouterr().err
    assert "made for smollm2-135m (3 blocks, layers 0123456789abcdef)" in err and "--transfer" in err
    assert err.count("\n") == 1 and spied == []


def test_transfer_needs_a_plan_file(tmp_path, capsys):
    assert main(["prune", "--model", "x", "--method", "wanda", "--transfer", "depth", "--out", str(tmp_path / "o")]) == 2
    assert "--plan FILE" in capsys.readouterr().err
