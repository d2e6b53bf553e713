"""Pruning plans and applying them to tiny models of every family; export and reload."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from automl_prune.errors import UserError
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.export import export_pruned
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.models.loading import load_model
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import METHODS, plan_for_method
from automl_prune.pruning.plan import PruningPlan
from tiny_models import FAMILIES, model_layer_error, tiny_model


def _ids(model, n=4, seqlen=32, seed=0):
    return torch.randint(0, model.config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _linears(model):
    return {f"{i}.{n}": m for i, b in enumerate(decoder_blocks(model)) for n, m in prunable_linears(b).items()}


# ----- plans --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", list(METHODS))
def test_named_plans_round_trip_through_yaml(method, tmp_path):
    plan = plan_for_method(method, sparsity=0.6)
    plan.save(tmp_path / "plan.yaml")
    again = PruningPlan.load(tmp_path / "plan.yaml")
    assert again == plan
    assert yaml.safe_load((tmp_path / "plan.yaml").read_text())["sparsity"] == 0.6


def test_nm_plan_fixes_sparsity_and_rejects_conflicts():
    plan = plan_for_method("wanda", pattern="2:4")
    assert plan.nm == (2, 4) and plan.sparsity == 0.5
    assert plan_for_method("wanda", pattern="4:8").sparsity == 0.5
    with pytest.raises(UserError, match="sparsity"):
        plan_for_method("wanda", pattern="2:4", sparsity=0.7)


@pytest.mark.parametrize("bad, field", [
    ({"metric": "wanda", "sparsity": 1.5}, "sparsity"),
    ({"metric": "wanda"}, "sparsity"),
    ({"metric": "nonsense", "sparsity": 0.5}, "metric"),
    ({"metric": "wanda", "sparsity": 0.5, "mode": "sometimes"}, "mode"),
    ({"metric": "wanda", "sparsity": 0.5, "colour": "red"}, "colour"),
    ({"metric": "wanda", "pattern": "4:2"}, "pattern"),
    ({"sparsity": 0.5}, "metric"),
])
def test_bad_plans_name_the_field(bad, field):
    with pytest.raises(UserError) as err:
        PruningPlan.from_dict(bad)
    assert field in str(err.value)


def test_unknown_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown method"):
        plan_for_method("wandaa", sparsity=0.5)


def test_per_block_and_per_layer_sparsity():
    plan = PruningPlan.from_dict({"metric": "magnitude", "sparsity": [0.2, 0.6], "layer_sparsity": {"1.mlp.down_proj": 0.3}})
    assert plan.sparsity_for(0, "mlp.down_proj", 2) == 0.2
    assert plan.sparsity_for(1, "mlp.down_proj", 2) == 0.3
    assert plan.sparsity_for(1, "mlp.up_proj", 2) == 0.6
    with pytest.raises(UserError, match="blocks"):
        plan.sparsity_for(0, "mlp.up_proj", 3)


# ----- applying plans ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_wanda_prunes_exactly_half_of_every_row_in_every_family(family):
    model = tiny_model(family)
    embed_before = model.get_input_embeddings().weight.clone()
    result = prune_model(model, plan_for_method("wanda", sparsity=0.5), _ids(model), progress=False, use_cache=False)
    for name, lin in _linears(model).items():
        per_row = (lin.weight == 0).sum(1)
        assert torch.all(per_row == lin.weight.shape[1] // 2), name
        assert result.layers[name]["sparsity"] == pytest.approx(0.5, abs=1 / lin.weight.shape[1])
    assert torch.equal(model.get_input_embeddings().weight, embed_before)
    assert result.realised_sparsity == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize("pattern, n, m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_pattern_is_valid_in_every_layer(pattern, n, m):
    model = tiny_model("mistral")
    prune_model(model, plan_for_method("ria", pattern=pattern), _ids(model), progress=False, use_cache=False)
    for name, lin in _linears(model).items():
        # exactly m - n zeros in every group of m consecutive inputs (no weight of the random model is zero)
        zeros = (lin.weight == 0).reshape(lin.weight.shape[0], -1, m).sum(-1)
        assert torch.all(zeros == m - n), (name, zeros.unique().tolist())
        assert (lin.weight == 0).float().mean() == 1 - n / m


def test_sequential_mode_changes_the_masks_of_later_blocks():
    ids = None
    masks = {}
    for mode in ("one-shot", "sequential"):
        model = tiny_model("llama")
        ids = _ids(model) if ids is None else ids
        prune_model(model, plan_for_method("wanda", sparsity=0.5, mode=mode), ids, progress=False, use_cache=False)
        masks[mode] = {k: v.weight == 0 for k, v in _linears(model).items()}
    assert all(torch.equal(masks["one-shot"][k], masks["sequential"][k]) for k in masks["one-shot"] if k.startswith("0."))
    assert any(not torch.equal(masks["one-shot"][k], masks["sequential"][k]) for k in masks["one-shot"] if k.startswith("1."))


def test_sparsegpt_update_lowers_the_layer_error_of_the_same_metric():
    base = tiny_model("llama")
    ids = _ids(base, n=8)
    errors = {}
    for update in ("none", "sparsegpt"):
        model = tiny_model("llama")
        prune_model(model, plan_for_method("wanda", sparsity=0.5, update=update), ids, progress=False, use_cache=False)
        errors[update] = model_layer_error(base, model, ids)
    model = tiny_model("llama")
    prune_model(model, plan_for_method("sparsegpt", sparsity=0.5), ids, progress=False, use_cache=False)
    errors["sparsegpt-method"] = model_layer_error(base, model, ids)
    assert errors["sparsegpt"] < errors["none"]
    assert errors["sparsegpt-method"] < errors["none"]


def test_magnitude_needs_no_calibration_data():
    model = tiny_model("opt")
    result = prune_model(model, plan_for_method("magnitude", sparsity=0.3), None, progress=False)
    assert result.realised_sparsity == pytest.approx(0.3, abs=0.01)


def test_export_and_reload_give_the_same_model(tmp_path):
    model = tiny_model("qwen3")
    ids = _ids(model)
    plan = plan_for_method("stade", sparsity=0.5)
    result = prune_model(model, plan, ids, progress=False, use_cache=False)
    ppl = perplexity(model, ids, progress=False)["ppl"]
    export_pruned(model, None, tmp_path / "out", plan, {"ppl": ppl, "layers": result.layers})
    assert PruningPlan.load(tmp_path / "out" / "plan.yaml") == plan
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["ppl"] == ppl
    again = load_model(str(tmp_path / "out"), device="cpu").model
    for name, lin in _linears(again).items():
        assert torch.equal(lin.weight, _linears(model)[name].weight), name
    assert perplexity(again, ids, progress=False)["ppl"] == pytest.approx(ppl, rel=1e-6)


def test_plan_with_fields_validates_the_copy():
    from automl_prune.errors import UserError
    from automl_prune.pruning.methods import plan_for_method

    plan = plan_for_method("wanda", sparsity=0.5)
    assert plan.with_fields() is plan
    seq = plan.with_fields(mode="sequential", update="sparsegpt")
    assert (seq.mode, seq.update, seq.sparsity, plan.mode) == ("sequential", "sparsegpt", 0.5, "one-shot")
    with pytest.raises(UserError, match="field 'update'"):
        plan.with_fields(update="obs")
