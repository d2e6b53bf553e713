"""Block-streamed models (offload: cpu | disk): every method prunes to the same weights as in
memory, forward passes give the same perplexity and KL, a streamed candidate scores the same
values, a streamed search gives the same study, the export reloads to the same weights; the
statistics cache is split by block and read lazily; the memory model refuses what cannot fit
before anything loads."""

from __future__ import annotations

import json
import logging

import optuna
import pytest
import torch

from automl_prune.calibration.cache import StatsCacheError, load_stats
from automl_prune.calibration.dense import dense_statistics
from automl_prune.candidate_context import CandidateContext
from automl_prune.cli import main
from automl_prune.errors import UserError
from automl_prune.evaluation.perplexity import perplexity
from automl_prune.models.adapters import decoder_blocks
from automl_prune.models.loading import load_model
from automl_prune.models.memory_model import Job, ModelShape, estimate
from automl_prune.models.offload import BlockStore
from automl_prune.pruning.apply import prune_model
from automl_prune.pruning.methods import METHODS, plan_for_method
from automl_prune.search.execution.candidate import score_candidate
from automl_prune.search.study.config import load_config
from automl_prune.search.run import run_search
from objectives import make_objective
from study_configs import tiny_study_config
from tiny_models import FAMILIES, tiny_model


def _ids(n=4, seqlen=32, seed=0):
    return torch.randint(0, 256, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def _offloaded(family: str, mode: str, tmp_path):
    model = tiny_model(family)
    return model, BlockStore.from_model(model, decoder_blocks(model), mode, folder=tmp_path / f"blocks-{family}-{mode}")


def _assert_same_weights(in_memory, store):
    for i, block in enumerate(decoder_blocks(in_memory)):
        stored = store.state_dict_of(i)
        for name, p in block.named_parameters():
            assert torch.equal(p, stored[store.prefixes[i] + name]), (i, name)


# ----- pruning ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["cpu", "disk"])
@pytest.mark.parametrize("method,pattern,prune_mode", [(m, "unstructured", "one-shot") for m in METHODS]
                         + [("wanda", "unstructured", "sequential"), ("sparsegpt", "unstructured", "sequential"),
                            ("ria", "2:4", "one-shot")])
def test_every_method_prunes_an_offloaded_model_to_the_same_weights(method, pattern, prune_mode, mode, tmp_path):
    ids = _ids()
    kw = dict(sparsity=0.5) if pattern == "unstructured" else dict(sparsity=None, pattern=pattern, permute="heuristic")
    plan = plan_for_method(method, mode=prune_mode, **kw)
    reference = tiny_model("llama")
    expected = prune_model(reference, plan, ids, use_cache=False, progress=False)
    model, store = _offloaded("llama", mode, tmp_path)
    result = prune_model(model, plan, ids, use_cache=False, progress=False, store=store)
    _assert_same_weights(reference, store)
    assert result.layers == expected.layers
    assert result.info["offload"] == mode
    assert set(result.permutations) == set(expected.permutations)
    # between uses the blocks hold no weights
    assert all(p.device.type == "meta" for b in decoder_blocks(model) for p in b.parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_streams_the_same_pruned_weights_and_perplexity(family, tmp_path):
    ids = _ids()
    reference = tiny_model(family)
    dense_ppl = perplexity(reference, ids, batch_size=2, progress=False)
    prune_model(reference, plan_for_method("sparsegpt", sparsity=0.5), ids, use_cache=False, progress=False)
    model, store = _offloaded(family, "disk", tmp_path)
    # the passthrough forward gives each block the arguments the model's own forward gives it
    assert perplexity(model, ids, batch_size=2, progress=False, store=store)["nll"] == dense_ppl["nll"]
    prune_model(model, plan_for_method("sparsegpt", sparsity=0.5), ids, use_cache=False, progress=False, store=store)
    _assert_same_weights(reference, store)
    assert (perplexity(model, ids, batch_size=2, progress=False, store=store)["nll"]
            == perplexity(reference, ids, batch_size=2, progress=False)["nll"])


def test_a_streamed_model_is_read_from_the_checkpoint_block_by_block(tiny_llama_dir, tmp_path):
    whole = load_model(str(tiny_llama_dir), device="cpu")
    streamed = load_model(str(tiny_llama_dir), device="cpu", offload="disk", offload_folder=tmp_path / "off")
    assert streamed.info["offload_load"] == "streamed from the checkpoint"
    assert streamed.info["offload"]["blocks"] == 3
    store = streamed.store
    assert all(path.startswith(str(tiny_llama_dir)) for src in store.sources for path, _ in src.values())
    assert all(p.device.type == "meta" for b in decoder_blocks(streamed.model) for p in b.parameters())
    ids = torch.randint(0, 1000, (2, 48), generator=torch.Generator().manual_seed(3))
    assert (perplexity(streamed.model, ids, progress=False, store=store)["nll"]
            == perplexity(whole.model, ids, progress=False)["nll"])
    cpu = load_model(str(tiny_llama_dir), device="cpu", offload="cpu")
    assert perplexity(cpu.model, ids, progress=False, store=cpu.store)["nll"] == perplexity(whole.model, ids, progress=False)["nll"]
    with pytest.raises(UserError, match="offload must be one of"):
        load_model(str(tiny_llama_dir), device="cpu", offload="gpu")


def test_prune_command_offloaded_exports_the_same_model_and_figures(tiny_llama_dir, data_dir, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    common = ["prune", "--model", str(tiny_llama_dir), "--method", "sparsegpt", "--device", "cpu", "--nsamples", "4",
              "--seqlen", "64", "--eval", "wikitext2", "--eval-seqlen", "64", "--eval-windows", "2", "--kl",
              "--data-dir", str(data_dir), "--cache-dir", str(tmp_path / "cache")]
    assert main([*common, "--out", str(tmp_path / "mem")]) == 0
    assert main([*common, "--out", str(tmp_path / "disk"), "--offload", "disk", "--offload-folder", str(tmp_path / "off")]) == 0
    out = capsys.readouterr().out
    assert "memory (offload: disk, model estimate)" in out
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "mem").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "disk").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("mem", "disk"))
    assert ma["layers"] == mb["layers"]
    ea, eb = ma["evaluation"]["wikitext2"], mb["evaluation"]["wikitext2"]
    assert (ea["dense"]["ppl"], ea["pruned"]["ppl"]) == (eb["dense"]["ppl"], eb["pruned"]["ppl"])
    assert eb["kl"]["kl"] == pytest.approx(ea["kl"]["kl"], rel=1e-5)
    assert mb["model"]["offload"]["offload"] == "disk"


# ----- candidates and searches --------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_streamed_candidate_scores_the_same_values(family, tmp_path):
    ids, probe = _ids(6), _ids(4, seed=1)

    def objectives():
        return [make_objective("layer_recon", weighting="fisher", fisher_windows=2),
                make_objective("layer_recon", weighting="block"), make_objective("kl", topk=None),
                make_objective("model_recon"), make_objective("calib_ppl"), make_objective("ppl")]

    reference = tiny_model(family)
    ctx = CandidateContext(reference, stats=dense_statistics(reference, ids, with_gram=True, use_cache=False, progress=False).stats,
                           probe_ids=probe, heldout_ids=_ids(2, seed=2))
    model, store = _offloaded(family, "disk", tmp_path)
    stats = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path / "cache", progress=False, store=store).stats
    sctx = CandidateContext(model, stats=stats, probe_ids=probe, heldout_ids=_ids(2, seed=2), store=store)
    assert sctx.streamed and not sctx.dense
    mine, theirs = objectives(), objectives()
    for o in mine:
        o.prepare(ctx)
    for o in theirs:
        o.prepare(sctx)
    for plan in (plan_for_method("wanda", sparsity=0.5), plan_for_method("sparsegpt", sparsity=0.6),
                 plan_for_method("bawa", sparsity=0.5), plan_for_method("wanda", sparsity=0.5)):
        a, b = score_candidate(ctx, plan, mine), score_candidate(sctx, plan, theirs)
        assert a.mask_hash == b.mask_hash
        assert b.values == pytest.approx(a.values, rel=1e-6, abs=0)
        assert b.realised_sparsity == a.realised_sparsity
    # the dense weights in the store are untouched by the candidates
    assert perplexity(model, probe, progress=False, store=store)["nll"] == pytest.approx(
        perplexity(tiny_model(family), probe, progress=False)["nll"], rel=0, abs=0)


SELECTION = {"stages": [{"tokens": 128, "keep": 2}, {"tokens": 256, "keep": 1}], "candidates": 3, "seqlen": 64,
             "objective": {"name": "kl", "params": {"topk": 64}}}


def test_an_offloaded_search_gives_the_same_study(tmp_path, tiny_llama_dir, data_dir, caplog):
    over = dict(budget={"trials": 6}, selection=SELECTION,
                objectives=[{"name": "layer_recon", "params": {"weighting": "fisher", "fisher_windows": 1}}],
                final={"baselines": ["wanda"], "top": 1, "fidelity_sample": 2})
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, **over)
    runs = {}
    for mode in ("none", "disk"):
        with caplog.at_level(logging.INFO, logger="automl_prune"):
            run_search(load_config(path, {"offload": mode}), tmp_path / mode, progress=False)
        runs[mode] = optuna.load_study(study_name="automl-prune", storage=f"sqlite:///{tmp_path / mode / 'study.db'}").get_trials()
    assert "memory per worker (offload: disk, model estimate, largest in the" in caplog.text
    a, b = runs["none"], runs["disk"]
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.values for t in a] == [t.values for t in b]
    assert [t.user_attrs["mask_hash"] for t in a] == [t.user_attrs["mask_hash"] for t in b]
    assert (tmp_path / "none" / "best.yaml").read_text() == (tmp_path / "disk" / "best.yaml").read_text()
    fa, fb = (json.loads((tmp_path / m / "final.json").read_text()) for m in ("none", "disk"))
    assert [r["ppl"] for r in fa["rows"]] == [r["ppl"] for r in fb["rows"]]
    assert fa["selection"]["selected"] == fb["selection"]["selected"]
    meta = json.loads((tmp_path / "disk" / "meta.json").read_text())
    assert meta["memory_model"]["offload"] == "disk" and meta["model"]["offload"]["offload"] == "disk"


def test_an_offloaded_study_refuses_what_it_cannot_stream(tmp_path, tiny_llama_dir, data_dir):
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, offload="disk",
                             objectives=[{"name": "layer_recon", "params": {"sketch": 16}}])
    with pytest.raises(UserError, match="field 'offload'.*sketch"):
        load_config(path)
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, offload="disk",
                             final={"zero_shot": {"tasks": ["boolq"]}})
    with pytest.raises(UserError, match="field 'offload'.*zero-shot"):
        load_config(path)


# ----- the statistics cache, by block ---------------------------------------------------------------
def test_the_statistics_cache_is_a_file_per_block_read_lazily(tmp_path, caplog):
    model, ids = tiny_model("llama"), _ids()
    first = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    entry = tmp_path / "stats" / first.info["cache_key"][:32]
    assert sorted(p.name for p in entry.glob("block-*.safetensors")) == ["block-0000.safetensors", "block-0001.safetensors"]
    lazy = load_stats(tmp_path, first.info["cache_key"], lazy=True)
    assert len(lazy) == 2 and torch.equal(lazy[1]["mlp.down_proj"].gram, first.stats[1]["mlp.down_proj"].gram)
    assert set(lazy.token_counts()) == {f"{i}.{n}" for i in range(2) for n in first.stats[i]}
    data = bytearray((entry / "block-0001.safetensors").read_bytes())
    data[len(data) // 2] ^= 0x01
    (entry / "block-0001.safetensors").write_bytes(bytes(data))
    lazy = load_stats(tmp_path, first.info["cache_key"], lazy=True)  # a reader that has not verified block 1 yet
    assert lazy[0]["mlp.up_proj"].n_tokens == first.stats[0]["mlp.up_proj"].n_tokens  # the intact block still reads
    with caplog.at_level(logging.WARNING, logger="automl_prune"), pytest.raises(StatsCacheError, match="run again"):
        lazy[1]
    # marked, not removed (other workers may be reading its blocks): a miss from now on, then replaced
    assert "hash mismatch" in caplog.text and (entry / "rejected").exists()
    assert load_stats(tmp_path, first.info["cache_key"]) is None
    again = dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False)
    assert again.info["cache"] == "miss" and not (entry / "rejected").exists()
    assert dense_statistics(model, ids, with_gram=True, cache_dir=tmp_path, progress=False).info["cache"] == "hit"
    # a block read once is not hashed again in this process
    lazy = load_stats(tmp_path, first.info["cache_key"], lazy=True)
    lazy[0]
    assert lazy.verified == {0}


# ----- the memory model -------------------------------------------------------------------------------
def test_the_memory_model_counts_the_model_and_orders_the_offload_modes(tiny_llama_dir):
    from transformers import AutoConfig

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    shape, exact = ModelShape.from_config(AutoConfig.from_pretrained(tiny_llama_dir)), ModelShape.from_model(loaded.model)
    assert shape == exact
    assert shape.rest_params + shape.n_blocks * shape.block_params == loaded.info["n_params"]
    assert len(shape.inputs) == 4  # q/k/v, o, gate/up, down
    host = {m: estimate(shape, Job("prune", offload=m, update="sparsegpt")).host_peak for m in ("none", "cpu", "disk")}
    assert host["disk"] < host["none"] <= host["cpu"]
    gpu = {m: estimate(shape, Job("candidate", offload=m, device="cuda")) for m in ("none", "cpu", "disk")}
    assert gpu["disk"].device_peak <= gpu["cpu"].device_peak < gpu["none"].device_peak
    assert gpu["disk"].host_peak < gpu["cpu"].host_peak


def test_the_search_phases_grow_in_order_and_a_cold_load_can_be_the_peak(tiny_llama_dir):
    """search_phases: each phase holds what the earlier ones left (load < statistics < objectives <
    search); the GGUF dequantization of a cold cache counts in the load phase alone, and when it is
    the largest the memory check fits that phase (peak_phase)."""
    from transformers import AutoConfig

    from automl_prune.models.memory_model import peak_phase, search_phases

    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_llama_dir))
    job = Job("candidate", n_windows=8, seqlen=64, probe_tokens=256, probe_seqlen=64, fisher_windows=2, heldout_tokens=256,
              selection_tokens=4096)
    warm = search_phases(shape, job)
    host = {name: e.host_peak for name, e in warm.items()}
    assert host["load model"] < host["statistics"] < host["objectives"] < host["search"] <= host["selection"]
    assert warm["search"].parts["score cache"] > 0 and "score cache" not in warm["objectives"].parts
    assert peak_phase(warm)[0] in ("search", "selection")
    cold = search_phases(shape, Job(**{**job.__dict__, "dequantize_bytes": 64 * 2**30}))
    assert cold["load model"].host_peak - warm["load model"].host_peak >= 64 * 2**30
    assert cold["search"].host_peak == warm["search"].host_peak
    assert peak_phase(cold)[0] == "load model"


def test_a_job_that_cannot_fit_is_refused_before_the_model_loads(tiny_llama_dir, data_dir, tmp_path, capsys):
    code = main(["prune", "--model", str(tiny_llama_dir), "--method", "sparsegpt", "--device", "cpu", "--nsamples", "400000",
                 "--seqlen", "512", "--no-eval", "--data-dir", str(data_dir), "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert code == 2
    assert "does not fit: host needs" in captured.err and "GiB" in captured.err and "hidden" in captured.err
    assert "model:" not in captured.out  # refused before the model was loaded
    path = tiny_study_config(tmp_path, tiny_llama_dir, data_dir, calibration={"source": "c4", "nsamples": 400000,
                                                                              "seqlen": 512, "seed": 0})
    with pytest.raises(UserError, match="(?s)does not fit: host needs.*hidden.*memory_check: false"):
        run_search(load_config(path), tmp_path / "search", progress=False)
    assert not (tmp_path / "search" / "meta.json").exists()
