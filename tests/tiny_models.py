"""Tiny random causal LMs of every supported family, for fast tests.

Every model: hidden 64, intermediate 128, 2 layers, 4 heads (2 KV heads where the family has
grouped-query attention), vocabulary 256, 256 positions, float32, eager attention (Gemma2 has no
SDPA path in transformers 5.23, so eager is the one that works for all), eval mode.
"""

from __future__ import annotations

import torch
import transformers
from transformers import AutoModelForCausalLM, PreTrainedModel

HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, VOCAB, POSITIONS = 64, 128, 2, 4, 2, 256, 256

_COMMON = dict(
    hidden_size=HIDDEN,
    intermediate_size=INTERMEDIATE,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    max_position_embeddings=POSITIONS,
    vocab_size=VOCAB,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)
_GQA = dict(_COMMON, num_key_value_heads=KV_HEADS)

#: family -> (config class name, config kwargs)
_CONFIGS: dict[str, tuple[str, dict]] = {
    "llama": ("LlamaConfig", _GQA),
    "mistral": ("MistralConfig", dict(_GQA, sliding_window=None)),
    "qwen2": ("Qwen2Config", _GQA),
    "qwen3": ("Qwen3Config", dict(_GQA, head_dim=16)),
    "gemma": ("GemmaConfig", dict(_GQA, head_dim=16)),
    "gemma2": ("Gemma2Config", dict(_GQA, head_dim=16, sliding_window=8)),
    # layer 0 sliding (window 8 < 16 test tokens), layer 1 full: per-layer masks and RoPE differ
    "gemma3": (
        "Gemma3TextConfig",
        dict(_GQA, head_dim=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
    ),
    "phi": ("PhiConfig", _GQA),
    "phi3": ("Phi3Config", _GQA),
    "opt": (
        "OPTConfig",
        dict(
            hidden_size=HIDDEN,
            ffn_dim=INTERMEDIATE,
            word_embed_proj_dim=HIDDEN,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=POSITIONS,
            vocab_size=VOCAB,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
    ),
    "gpt_neox": ("GPTNeoXConfig", _COMMON),
}

#: Families with a tiny model; ``tiny_model(f)`` works for each.
FAMILIES: list[str] = list(_CONFIGS)

#: Linear layers per block for each family.
LINEARS_PER_BLOCK: dict[str, int] = {
    "llama": 7, "mistral": 7, "qwen2": 7, "qwen3": 7, "gemma": 7, "gemma2": 7, "gemma3": 7,
    "phi": 6, "phi3": 4, "opt": 6, "gpt_neox": 4,
}


def tiny_config(family: str):
    """The config of the tiny model of ``family``."""
    if family not in _CONFIGS:
        raise KeyError(f"no tiny model for {family!r}; families: {FAMILIES}")
    cls_name, kwargs = _CONFIGS[family]
    return getattr(transformers, cls_name)(**kwargs)


def tiny_model(family: str, *, seed: int = 0) -> PreTrainedModel:
    """A tiny random ``...ForCausalLM`` of ``family``, deterministic in ``seed``, in eval mode."""
    config = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    return model.eval()


def tiny_gemma3_multimodal(*, seed: int = 0) -> PreTrainedModel:
    """A tiny ``Gemma3ForConditionalGeneration`` (model_type ``gemma3``) whose vision tower has
    *more* blocks (3) than its language model (2): a generic "longest ModuleList" search would
    pick the wrong one, the adapter table must not."""
    text = tiny_config("gemma3")
    text.vocab_size = 300
    vision = transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2, image_size=32, patch_size=8
    )
    config = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        boi_token_index=297, eoi_token_index=298, image_token_index=299,
    )
    torch.manual_seed(seed)
    return transformers.Gemma3ForConditionalGeneration(config).eval()


# ----- a tiny model with real calibration statistics (shared by the space and allocation tests) -----
C4_FILE = "c4/c4-train.00000-of-01024.first1000.jsonl"


def byte_windows(n: int, seqlen: int, data_dir=None) -> tuple[torch.Tensor, str]:
    """``n`` windows of ``seqlen`` tokens for a 256-token vocabulary: the UTF-8 bytes of the first
    C4 calibration documents of the offline data folder (``data_dir``, else $AUTOML_PRUNE_DATA_DIR,
    else ../shared/data), real text. Without the file the calling test is skipped (failed under the
    require switch, see ci_requires.py): never random tokens in its place. Returns (input_ids, source)."""
    import json
    from pathlib import Path

    from ci_requires import data_root, missing

    path = Path(data_dir or data_root()) / C4_FILE
    if not path.is_file():
        missing(f"not present: {path}, the offline data folder's C4 text (set AUTOML_PRUNE_DATA_DIR to the folder)")
    data = bytearray()
    with open(path, encoding="utf-8") as f:
        for line in f:
            data += json.loads(line)["text"].encode("utf-8") + b"\n\n"
            if len(data) >= n * seqlen:
                break
    if len(data) < n * seqlen:
        raise ValueError(f"{path} holds {len(data)} bytes of text, fewer than the {n} x {seqlen} asked for")
    return torch.tensor(list(data[: n * seqlen]), dtype=torch.long).reshape(n, seqlen), "c4-bytes"


_CALIBRATED: dict = {}


def calibrated_tiny_llama(layers: int = 4, *, seed: int = 0, n: int = 8, seqlen: int = 64):
    """(model, stats, source): a tiny random Llama with ``layers`` blocks and its dense calibration
    statistics (``stats[block][layer]``), computed once per process. Do not modify the model."""
    key = (layers, seed, n, seqlen)
    if key not in _CALIBRATED:
        from automl_prune.calibration.dense import dense_statistics

        config = tiny_config("llama")
        config.num_hidden_layers = layers
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32).eval()
        ids, source = byte_windows(n, seqlen)
        stats = dense_statistics(model, ids, use_cache=False, progress=False).stats
        _CALIBRATED[key] = (model, stats, source)
    return _CALIBRATED[key]


def reconstruction_error(weight: torch.Tensor, dense: torch.Tensor, gram: torch.Tensor) -> float:
    """A layer's output reconstruction error from its Gram matrix, written out here as the tests'
    independent reference: ||X (W_dense - W)^T||_F^2 = trace(dW G dW^T) with G = X^T X, in float64."""
    dW = dense.detach().double() - weight.detach().double()
    return float(((dW @ gram.detach().double()) * dW).sum())


def model_layer_error(dense: PreTrainedModel, pruned: PreTrainedModel, ids: torch.Tensor) -> float:
    """Sum over prunable layers of ||X W_dense^T - X W_pruned^T||^2, X the dense model's inputs."""
    from automl_prune.calibration.dense import dense_statistics
    from automl_prune.models.adapters import decoder_blocks, prunable_linears

    stats = dense_statistics(dense, ids, with_gram=True, use_cache=False, progress=False).stats
    total = 0.0
    for i, (bd, bp) in enumerate(zip(decoder_blocks(dense), decoder_blocks(pruned))):
        pruned_linears = prunable_linears(bp)
        for name, lin in prunable_linears(bd).items():
            total += reconstruction_error(pruned_linears[name].weight, lin.weight, stats[i][name].gram)
    return total
