"""Weight reconstruction and mask refinement: ADMM, DSnoT, RIA channel permutation for N:M."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from tiny_models import model_layer_error, reconstruction_error, tiny_model

from automl_prune.calibration.stats import LinearStats
from automl_prune.errors import UserError
from automl_prune.metrics.kernel import score
from automl_prune.metrics.spec import RIAMetric, WandaMetric
from automl_prune.models.adapters import decoder_blocks, prunable_linears
from automl_prune.pruning.admm import admm_prune, cubic_schedule
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.dsnot import dsnot_refine
from automl_prune.pruning.masks import check_nm, nm_mask, unstructured_mask
from automl_prune.pruning.methods import plan_for_method
from automl_prune.pruning.permutation import heuristic_order, nm_permutation, nm_retained, permuted_nm_mask
from automl_prune.pruning.plan import PruningPlan
from automl_prune.pruning.sparsegpt import sparsegpt_prune
from reference import check_permuted_nm, per_row_counts

OUT, IN = 48, 192


def layer(seed=0, n_tokens=2048, n_seqs=8, shift=0.5):
    """Correlated inputs with a non-zero mean (as LLM activations have), their statistics, a weight."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(IN, IN, generator=g) / IN**0.5 + 0.3 * torch.eye(IN)
    scale = torch.exp(torch.randn(IN, generator=g))  # uneven channel norms, as in LLMs
    X = (torch.randn(n_tokens, IN, generator=g) @ A + shift * torch.randn(IN, generator=g)) * scale
    W = torch.randn(OUT, IN, generator=g)
    stats = LinearStats.empty(IN, with_gram=True)
    stats.update(X.reshape(n_seqs, -1, IN), n_seqs=n_seqs)
    return X, W, stats


def wanda_mask(W, stats, sparsity=0.5):
    return unstructured_mask(score(WandaMetric(), W, stats), sparsity, group="row")


# ----- ADMM ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_admm_and_sparsegpt_beat_mask_only_on_the_same_mask(pattern):
    X, W, stats = layer()
    s = score(WandaMetric(), W, stats)
    mask = nm_mask(s, 2, 4) if pattern == "2:4" else unstructured_mask(s, 0.5, group="row")
    G = stats.gram
    mask_only = reconstruction_error(W.masked_fill(mask, 0), W, G)
    admm = admm_prune(W, G, mask)
    sgpt = sparsegpt_prune(W, stats, mask=mask)
    e_admm, e_sgpt = reconstruction_error(admm.weight, W, G), reconstruction_error(sgpt.weight, W, G)
    assert e_admm < 0.8 * mask_only and e_sgpt < 0.8 * mask_only, (mask_only, e_admm, e_sgpt)
    # the error is measured on the real inputs too, not only through the Gram matrix
    direct = float(((X.double() @ (W - admm.weight).double().T) ** 2).sum())
    assert direct == pytest.approx(e_admm, rel=1e-3)


def test_admm_keeps_exactly_the_masks_zeros():
    _, W, stats = layer(seed=1)
    mask = wanda_mask(W, stats, 0.6)
    res = admm_prune(W, stats.gram, mask)
    assert torch.equal(res.mask, mask)
    assert torch.equal(res.weight == 0, mask)  # zero exactly where pruned, nowhere else
    assert torch.isfinite(res.weight).all()


def test_more_admm_iterations_lower_the_error():
    _, W, stats = layer(seed=2)
    mask = wanda_mask(W, stats, 0.7)
    errs = [reconstruction_error(admm_prune(W, stats.gram, mask, iterations=k).weight, W, stats.gram) for k in (1, 5, 20)]
    assert errs[0] > errs[1] > errs[2]


def test_cubic_schedule_ends_at_the_target():
    fractions = [cubic_schedule(t, 15) for t in range(15)]
    assert fractions[-1] == pytest.approx(1.0) and all(a < b for a, b in zip(fractions, fractions[1:]))
    assert fractions[0] > 0.15  # cubic: most of the pruning happens early


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_admm_gradual_selection_reaches_the_exact_pattern(pattern):
    _, W, stats = layer(seed=3)
    plan = plan_for_method("wanda", sparsity=None if pattern == "2:4" else 0.6, pattern=pattern, update="admm")
    plan = plan.model_copy(update={"admm": plan.admm.model_copy(update={"gradual": True})})
    from automl_prune.pruning.layer import prune_weight

    new, info = prune_weight(W, stats, plan, plan.sparsity)
    assert info["gradual"] is True
    if pattern == "2:4":
        assert check_nm(new, 2, 4) and (new == 0).float().mean() == 0.5
    else:
        assert (per_row_counts(new) == int(IN * 0.6)).all()  # Wanda's per-row group
    fixed, _ = prune_weight(W, stats, plan.model_copy(update={"admm": plan.admm.model_copy(update={"gradual": False})}), plan.sparsity)
    assert not torch.equal(new == 0, fixed == 0)  # the gradual path chose its own mask


def test_admm_gradual_obs_score_ranks_the_iterate_by_the_obs_saliency():
    """gradual_score="obs": the selector sees the iterate's columns divided by sqrt([G'^-1]_jj) of the
    damped normalised Gram matrix (at the first step the iterate is the dense weight), so Wanda's
    metric on it ranks w'^2 / [G'^-1]_jj; the default passes the iterate as it is."""
    _, W, stats = layer(seed=4)
    mask = wanda_mask(W, stats, 0.5)
    seen = {}

    def spy(score_name):
        def select(w, fraction):
            seen.setdefault(score_name, w.clone())
            return wanda_mask(w, stats, 0.5 * fraction)
        return select

    damping = 0.03
    for name in ("metric", "obs"):
        admm_prune(W, stats.gram, mask, select=spy(name), damping=damping, gradual_score=name)
    G = stats.gram.double()
    norm = G.diagonal().sqrt() + 1e-8
    Gn = G / norm[None, :] / norm[:, None]
    Gn.diagonal().add_(damping * float(Gn.diagonal().mean()))
    d = torch.linalg.inv(Gn).diagonal()
    assert torch.allclose(seen["metric"], W, rtol=1e-5, atol=1e-6)
    assert torch.allclose(seen["obs"].double(), W.double() / d.sqrt()[None, :], rtol=1e-3, atol=1e-6)
    obs = admm_prune(W, stats.gram, mask, select=spy("again"), damping=damping, gradual_score="obs")
    assert obs.info["gradual_score"] == "obs" and torch.equal(obs.weight == 0, obs.mask)
    with pytest.raises(ValueError, match="gradual_score"):
        admm_prune(W, stats.gram, mask, select=spy("bad"), gradual_score="hessian")


def test_the_default_gradual_score_is_left_out_of_plans():
    """Plans (and the keys and fingerprints made from them) written before gradual_score existed stay
    the same: the default is not written; obs is, and reads back."""
    plain = PruningPlan.from_dict({"metric": {"name": "wanda"}, "sparsity": 0.5, "update": "admm", "admm": {"gradual": True}})
    assert "gradual_score" not in plain.to_dict()["admm"] and "gradual_score" not in plain.admm.model_dump_json()
    obs = plain.with_fields(admm={"gradual": True, "gradual_score": "obs"})
    assert obs.to_dict()["admm"]["gradual_score"] == "obs"
    assert PruningPlan.from_dict(obs.to_dict()) == obs and obs != plain
    with pytest.raises(UserError, match="admm"):
        plain.with_fields(admm={"gradual_score": "hessian"})


def test_admm_rejects_bad_input():
    _, W, stats = layer()
    mask = wanda_mask(W, stats)
    with pytest.raises(ValueError, match="Gram"):
        admm_prune(W, stats.gram[:10, :10], mask)
    with pytest.raises(ValueError, match="iteration"):
        admm_prune(W, stats.gram, mask, iterations=0)


# ----- DSnoT ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("same_sign", [False, True])
def test_dsnot_keeps_sparsity_per_row_and_lowers_the_output_shift(same_sign):
    _, W, stats = layer(seed=4)
    s = score(WandaMetric(), W, stats)
    mask = unstructured_mask(s, 0.6, group="row")
    res = dsnot_refine(W, mask, stats.mean, stats.var, s, threshold=0.0, same_sign=same_sign)
    assert res.swaps > 0 and not torch.equal(res.mask, mask)
    assert torch.equal(per_row_counts(res.mask), per_row_counts(mask))
    assert res.shift_after < (0.5 if same_sign else 0.9) * res.shift_before
    # the reported shift is the real one: sum over rows of |sum of pruned W_ij * mean_j|
    c = W.double() * stats.mean.reshape(1, -1)
    e = (c * res.mask).sum(1)
    assert float(e.abs().sum()) == pytest.approx(res.shift_after, rel=1e-9)
    if same_sign:  # no row's shift changed sign
        e0 = (c * mask).sum(1)
        assert bool(((torch.sign(e) == torch.sign(e0)) | (e == 0)).all())


def test_dsnot_on_nm_keeps_the_pattern():
    _, W, stats = layer(seed=5)
    s = score(WandaMetric(), W, stats)
    mask = nm_mask(s, 2, 4)
    res = dsnot_refine(W, mask, stats.mean, stats.var, s, nm=(2, 4), threshold=0.0)
    assert res.swaps > 0 and check_nm(res.mask, 2, 4)
    assert int(res.mask.sum()) == int(mask.sum()) and res.shift_after < res.shift_before


def test_dsnot_stops_at_the_threshold_and_cycle_limit():
    _, W, stats = layer(seed=6)
    s = score(WandaMetric(), W, stats)
    mask = unstructured_mask(s, 0.5, group="row")
    none = dsnot_refine(W, mask, stats.mean, stats.var, s, max_cycles=0)
    assert none.swaps == 0 and torch.equal(none.mask, mask)
    one = dsnot_refine(W, mask, stats.mean, stats.var, s, max_cycles=1, threshold=0.0)
    assert 0 < one.swaps <= OUT
    huge = dsnot_refine(W, mask, stats.mean, stats.var, s, threshold=1e12)
    assert huge.swaps == 0


# ----- channel permutation -------------------------------------------------------------------------
@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_permutation_gives_valid_nm_in_permuted_order_and_never_retains_less(nm):
    _, W, stats = layer(seed=7)
    s = score(RIAMetric(), W, stats)
    n, m = nm
    for lsa in (False, True):
        p = nm_permutation(s, n, m, lsa=lsa)
        assert sorted(p.order.tolist()) == list(range(IN))
        assert p.retained >= p.retained_identity
        mask = permuted_nm_mask(s, p.order, n, m)
        assert check_permuted_nm(mask, p.order, n, m)
        assert float(s.double().masked_fill(mask, 0).sum()) == pytest.approx(p.retained)
    heuristic, refined = nm_permutation(s, n, m), nm_permutation(s, n, m, lsa=True)
    assert refined.retained >= heuristic.retained
    assert refined.retained > refined.retained_identity  # on uneven channels permutation pays
    assert not check_nm(permuted_nm_mask(s, refined.order, n, m), n, m)  # not N:M in the original order


def test_permutation_pays_where_the_groups_are_uneven():
    # one row, 2:4: the four strong channels all sit in the first group, so N:M in the original order
    # keeps two of them; dealt out over the two groups, all four survive and only the zeros are pruned
    s = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    p = nm_permutation(s, 2, 4)
    assert (p.retained_identity, p.retained, p.method) == (2.0, 4.0, "heuristic")
    mask = permuted_nm_mask(s, p.order, 2, 4)
    assert torch.equal(mask, s == 0)  # True = pruned: every strong channel kept
    assert check_permuted_nm(mask, p.order, 2, 4) and not check_nm(mask, 2, 4)


def test_permutation_falls_back_to_identity_when_it_would_retain_less():
    # column totals 2, 2 (channels 1, 4), then 1, 1, 1 (2, 5, 7): the balancing heuristic deals 1, 2
    # and 7 into one group, where row 1 keeps two of its three non-zeros (6 kept in all); the original
    # groups keep 7, so the identity is returned
    s = torch.tensor([[0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0],
                      [0.0, 2.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    assert nm_retained(s[:, heuristic_order(s, 4)], 2, 4) == 6.0  # the heuristic alone would lose
    p = nm_permutation(s, 2, 4)
    assert p.method == "identity" and torch.equal(p.order, torch.arange(8))
    assert p.retained == p.retained_identity == nm_retained(s, 2, 4) == 7.0
    assert torch.equal(permuted_nm_mask(s, p.order, 2, 4), nm_mask(s, 2, 4))
    # nothing to gain (every grouping retains the same): the order returned keeps exactly as much
    flat = torch.ones(8, 16)
    q = nm_permutation(flat, 2, 4)
    assert q.retained == q.retained_identity == 8 * 8.0


# ----- plans and whole models ----------------------------------------------------------------------
def test_plan_fields_round_trip_and_stay_quiet_by_default(tmp_path):
    plain = plan_for_method("wanda", sparsity=0.5)
    assert not {"refine", "permute", "admm", "dsnot"} & set(plain.to_dict())
    plan = PruningPlan.from_dict({"metric": {"name": "wanda"}, "pattern": "2:4", "permute": "lsa", "refine": "dsnot",
                                  "update": "admm", "admm": {"iterations": 10, "gradual": True}, "dsnot": {"threshold": 0.0}})
    plan.save(tmp_path / "p.yaml")
    again = PruningPlan.load(tmp_path / "p.yaml")
    assert again == plan and again.admm.iterations == 10 and again.dsnot.threshold == 0.0
    assert "channel permutation (lsa)" in plan.describe() and "dsnot" in plan.describe()


@pytest.mark.parametrize("fields, field", [
    ({"metric": {"name": "wanda"}, "sparsity": 0.5, "permute": "heuristic"}, "permute"),
    ({"metric": None, "update": "sparsegpt", "sparsity": 0.5, "refine": "dsnot"}, "metric"),
    ({"metric": {"name": "wanda"}, "sparsity": 0.5, "update": "admm", "admm": {"iterations": 0}}, "admm.iterations"),
    ({"metric": {"name": "wanda"}, "sparsity": 0.5, "update": "obs"}, "update"),
])
def test_bad_plans_name_the_problem(fields, field):
    with pytest.raises(UserError, match=field.split(".")[0]):
        PruningPlan.from_dict(fields)


def _ids(model, n=8, seqlen=32):
    return torch.randint(0, model.config.vocab_size, (n, seqlen), generator=torch.Generator().manual_seed(0))


def test_dsnot_skips_the_layers_named_in_skip():
    base = tiny_model("llama")
    ids = _ids(base)
    masks = {}
    for label, plan in {"wanda": plan_for_method("wanda", sparsity=0.5),
                        "dsnot": plan_for_method("dsnot", sparsity=0.5).with_fields(dsnot={"threshold": 0.0})}.items():  # tiny shifts
        model = tiny_model("llama")
        prune_model(model, plan, ids, progress=False, use_cache=False)
        masks[label] = {f"{i}.{n}": m.weight == 0 for i, b in enumerate(decoder_blocks(model)) for n, m in prunable_linears(b).items()}
    changed = {k for k in masks["wanda"] if not torch.equal(masks["wanda"][k], masks["dsnot"][k])}
    assert changed and all(".mlp." not in f".{k}." for k in changed)  # the reference default skips the MLP
    assert any(k.split(".", 1)[1].startswith("self_attn") for k in changed)


def test_whole_model_admm_and_dsnot_on_a_tiny_llama():
    base = tiny_model("llama")
    ids = _ids(base)
    errors, sparsity = {}, {}
    for label, kw in {"wanda": {}, "wanda+admm": {"update": "admm"}, "wanda+sparsegpt": {"update": "sparsegpt"},
                      "wanda+dsnot": {"refine": "dsnot"}}.items():
        model = tiny_model("llama")
        res = prune_model(model, plan_for_method("wanda", sparsity=0.5, **kw), ids, progress=False, use_cache=False)
        errors[label], sparsity[label] = model_layer_error(base, model, ids), res.realised_sparsity
    assert errors["wanda+admm"] < errors["wanda"] and errors["wanda+sparsegpt"] < errors["wanda"]
    assert all(v == pytest.approx(sparsity["wanda"], abs=1e-9) for v in sparsity.values())


def test_whole_model_permuted_nm_records_the_orders():
    model = tiny_model("llama")
    ids = _ids(model)
    res = prune_model(model, plan_for_method("ria", pattern="2:4", permute="heuristic"), ids, progress=False, use_cache=False)
    linears = {f"{i}.{n}": m for i, b in enumerate(decoder_blocks(model)) for n, m in prunable_linears(b).items()}
    assert set(res.permutations) == set(linears)
    for name, lin in linears.items():
        assert check_permuted_nm(lin.weight, res.permutations[name], 2, 4)
        assert res.layers[name]["retained_gain"] >= 0
    assert res.realised_sparsity == pytest.approx(0.5, abs=1e-3)


def test_cli_prune_with_permutation_dsnot_and_admm(tiny_llama_dir, data_dir, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "automl_prune.cli", "prune", "--model", str(tiny_llama_dir), "--method", "wanda",
           "--pattern", "2:4", "--permute", "heuristic", "--refine", "dsnot", "--update", "admm", "--calib", "c4",
           "--nsamples", "4", "--seqlen", "64", "--eval", "wikitext2", "--eval-seqlen", "64", "--eval-windows", "2",
           "--data-dir", str(data_dir), "--no-cache", "--out", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "permuted input-channel order" in run.stdout
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert plan["permute"] == "heuristic" and plan["refine"] == "dsnot" and plan["update"] == "admm"
    metrics = json.loads((out / "metrics.json").read_text())
    assert "not 2:4" in metrics["pattern_note"]
    from safetensors.torch import load_file

    orders = load_file(str(out / "channel_permutations.safetensors"))
    assert len(orders) == len(metrics["layers"])


# ----- the reconstruction dimension of a search ----------------------------------------------------
def test_reconstruction_space_decodes_names_and_keys_the_update():
    from search_spaces import make_space

    space = make_space({"metric": "bawa", "pattern": {"name": "nm", "pattern": "2:4"},
                        "reconstruction": {"update": ["none", "admm", "sparsegpt"], "permute": ["none", "heuristic"]}})
    points = space.named_points()
    assert {"wanda", "wanda+admm", "wanda+sparsegpt"} <= set(points)
    plain, admm = space.decode(points["wanda"]), space.decode(points["wanda+admm"])
    assert plain.update == "none" and admm.update == "admm" and admm.pattern == "2:4"
    assert space.canonical_key(points["wanda"]) != space.canonical_key(points["wanda+admm"])
    permuted = dict(points["wanda"], **{"recon.permute": "heuristic"})
    assert space.decode(permuted).permute == "heuristic"
    assert '"raw"' in space.canonical_key(permuted) and '"raw"' not in space.canonical_key(points["wanda"])
    # without the section, plans and keys are exactly what they were
    bare = make_space({"metric": "bawa"})
    assert "reconstruction" not in bare.canonical_key(bare.named_points()["wanda"])
    assert "recon.update" not in bare.distributions()


@pytest.mark.parametrize("section, field", [
    ({"permute": ["none", "heuristic"]}, "space.reconstruction.permute"),
    ({"update": ["obs"]}, "space.reconstruction.update"),
    ({"update": []}, "space.reconstruction.update"),
])
def test_bad_reconstruction_sections_name_the_field(section, field):
    from search_spaces import make_space

    with pytest.raises(UserError, match=field.replace(".", r"\.")):
        make_space({"metric": "bawa", "reconstruction": section})


def test_a_study_searches_the_weight_update(tmp_path, tiny_llama_dir, data_dir):
    import optuna
    from optuna.trial import TrialState
    from study_configs import tiny_study_config

    from automl_prune.search.study.config import load_config
    from automl_prune.search.study.storage import storage_url, study_name
    from automl_prune.search.run import run_search

    space = {"metric": {"name": "bawa"}, "pattern": {"name": "unstructured", "sparsity": 0.5},
             "reconstruction": {"update": ["none", "admm"]}}
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, space=space, budget={"trials": 12},
                             final={"baselines": ["wanda"], "top": 1, "fidelity_sample": 0})
    config = load_config(path)
    run_search(config, tmp_path / "out", final=False, progress=False)
    study = optuna.load_study(study_name=study_name(config), storage=storage_url(config, tmp_path / "out"))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    by_label = {t.user_attrs.get("named_point"): t for t in done}
    assert by_label["wanda+admm"].user_attrs["plan"]["update"] == "admm"
    assert by_label["wanda"].user_attrs["plan"]["update"] == "none"
    # the same mask with an update is a different candidate (not reused) and reconstructs better
    assert by_label["wanda+admm"].user_attrs["mask_hash"] != by_label["wanda"].user_attrs["mask_hash"]
    assert by_label["wanda+admm"].values[0] < by_label["wanda"].values[0]
