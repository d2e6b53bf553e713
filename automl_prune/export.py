"""Export a pruned model as a Hugging Face folder with the plan and the metrics that describe it."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from torch import nn

from .atomic import atomic_dir
from .models.gguf_cache import strip_quantizer
from .models.offload import full_state_dict
from .pruning.plan import PruningPlan


def save_pretrained_clean(model: nn.Module, tokenizer, out: Path) -> None:
    """``save_pretrained`` in safetensors; a GGUF-loaded model is first stripped of its quantizer."""
    strip_quantizer(model)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


#: where the input-channel orders of a permuted N:M prune are written
PERMUTATIONS_FILE = "channel_permutations.safetensors"


def save_streamed(model: nn.Module, store, tokenizer, out: Path) -> None:
    """A block-streamed model saved as ``save_pretrained`` would: safetensors shards (the non-block
    weights, then a shard per decoder block, written one at a time) with their index, the config
    and the tokenizer. Tied weights are saved once (as the model's ``_tied_weights_keys`` say)."""
    from safetensors.torch import save_file

    strip_quantizer(model)
    tied = set(_tied_keys(model))
    parts = list(range(len(store.blocks) + 1))
    weight_map: dict[str, str] = {}
    total = 0
    for k, (_, tensors) in zip(parts, full_state_dict(model, store)):
        tensors = {n: t.contiguous() for n, t in tensors.items() if n not in tied}
        name = f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({n: name for n in tensors})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}, indent=2))
    model.config.save_pretrained(out)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def _tied_keys(model: nn.Module) -> list[str]:
    """Parameter names that share their tensor with an earlier one (saved once, under the first name)."""
    seen: dict[int, str] = {}
    tied = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.append(name)
        else:
            seen[id(p)] = name
    return tied


def export_pruned(model: nn.Module, tokenizer, out: str | Path, plan: PruningPlan, metrics: dict,
                  permutations: dict | None = None, store=None) -> Path:
    """Write ``out/`` = model (safetensors, config, tokenizer) + ``plan.yaml`` + ``metrics.json``,
    plus the per-layer channel orders (``channel_permutations.safetensors``: permuted column k of
    layer L is original column order[k]) when the mask is N:M only in a permuted order. ``store``:
    the model's blocks are offloaded (models/offload.py): saved a block at a time.

    The folder is written beside ``out`` and renamed into place when complete (atomic.py): a kill
    leaves the earlier export, or nothing, at ``out``."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        if store is None:
            save_pretrained_clean(model, tokenizer, tmp)
        else:
            save_streamed(model, store, tokenizer, tmp)
        _test_pause()
        if permutations:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in permutations.items()}, str(tmp / PERMUTATIONS_FILE))
        plan.save(tmp / "plan.yaml")
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return out


def _test_pause() -> None:
    """Tests only: $AUTOML_PRUNE_TEST_EXPORT_PAUSE seconds of sleep once the weights are written, so
    that a test can kill the process in the middle of an export (tests/test_atomic_export.py)."""
    seconds = os.environ.get("AUTOML_PRUNE_TEST_EXPORT_PAUSE")
    if seconds:
        time.sleep(float(seconds))
