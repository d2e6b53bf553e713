"""Export a pruned model as a Hugging Face folder with the plan and the metrics that describe it."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .models.gguf_cache import strip_quantizer
from .pruning.plan import PruningPlan


def save_pretrained_clean(model: nn.Module, tokenizer, out: Path) -> None:
    """``save_pretrained`` in safetensors; a GGUF-loaded model is first stripped of its quantizer."""
    strip_quantizer(model)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


#: where the input-channel orders of a permuted N:M prune are written
PERMUTATIONS_FILE = "channel_permutations.safetensors"


def export_pruned(model: nn.Module, tokenizer, out: str | Path, plan: PruningPlan, metrics: dict,
                  permutations: dict | None = None) -> Path:
    """Write ``out/`` = model (safetensors, config, tokenizer) + ``plan.yaml`` + ``metrics.json``,
    plus the per-layer channel orders (``channel_permutations.safetensors``: permuted column k of
    layer L is original column order[k]) when the mask is N:M only in a permuted order."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained_clean(model, tokenizer, out)
    if permutations:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in permutations.items()}, str(out / PERMUTATIONS_FILE))
    plan.save(out / "plan.yaml")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    return out
