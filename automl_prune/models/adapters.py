"""Where the decoder blocks and their prunable linear layers are, for any causal LM.

A small table maps each known ``model_type`` to the attribute path of its decoder blocks; any
other model falls back to a generic search (the longest ``nn.ModuleList`` of modules of one class
that each contain ``nn.Linear`` layers). Embeddings and the LM head are never returned: they live
outside the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from automl_prune.errors import UserError


@dataclass(frozen=True)
class Adapter:
    """How one model family is laid out.

    ``block_paths``: candidate attribute paths of the decoder-block ModuleList, tried in order
    (the first for the ``...ForCausalLM`` class, later ones for a bare base model).
    ``needs_bos``: windows fed to the model must start with the BOS token.
    """

    family: str
    block_paths: tuple[str, ...]
    needs_bos: bool = False


_DECODER = ("model.layers", "layers")
ADAPTERS: dict[str, Adapter] = {
    "llama": Adapter("llama", _DECODER),
    "mistral": Adapter("mistral", _DECODER),
    "qwen2": Adapter("qwen2", _DECODER),
    "qwen3": Adapter("qwen3", _DECODER),
    "gemma": Adapter("gemma", _DECODER, needs_bos=True),
    "gemma2": Adapter("gemma2", _DECODER, needs_bos=True),
    "gemma3_text": Adapter("gemma3", _DECODER, needs_bos=True),
    # multimodal Gemma3ForConditionalGeneration: only the language model is pruned
    "gemma3": Adapter("gemma3", ("model.language_model.layers", "language_model.layers", *_DECODER), needs_bos=True),
    "phi": Adapter("phi", _DECODER),
    "phi3": Adapter("phi3", _DECODER),
    "opt": Adapter("opt", ("model.decoder.layers", "decoder.layers")),
    "gpt_neox": Adapter("gpt_neox", ("gpt_neox.layers", "layers")),
}


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def _get_path(root: nn.Module, path: str) -> nn.Module | None:
    obj: object = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.Module) else None


def _has_linear(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Linear) for m in module.modules())


def _is_block_list(obj: nn.Module | None) -> bool:
    """A non-empty ModuleList of modules of one class, each containing at least one nn.Linear."""
    if not isinstance(obj, nn.ModuleList) or len(obj) == 0:
        return False
    cls = type(obj[0])
    return all(type(m) is cls and _has_linear(m) for m in obj)


def _generic_block_path(model: nn.Module) -> str | None:
    """The longest block-like ModuleList (ties: the one with more parameters, then the first)."""
    best: tuple[int, int] | None = None
    best_name = None
    for name, module in model.named_modules():
        if name and _is_block_list(module):
            key = (len(module), sum(p.numel() for p in module.parameters()))
            if best is None or key > best:
                best, best_name = key, name
    return best_name


def block_path(model: nn.Module) -> str:
    """Attribute path of the decoder-block ModuleList, e.g. ``"model.layers"``.

    Raises UserError when the model has no ModuleList of decoder blocks with linear layers.
    """
    adapter = ADAPTERS.get(_model_type(model) or "")
    if adapter is not None:
        for path in adapter.block_paths:
            if _is_block_list(_get_path(model, path)):
                return path
    path = _generic_block_path(model)
    if path is None:
        raise UserError(
            f"Cannot prune {type(model).__name__} (model_type {_model_type(model)!r}): no ModuleList of "
            "decoder blocks with nn.Linear layers was found. Supported families: " + ", ".join(sorted(ADAPTERS))
        )
    return path


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks, in forward order."""
    return list(_get_path(model, block_path(model)))


def prunable_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers of one block by name relative to it (``"self_attn.q_proj"``), in module order."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}


def model_linears(model_or_blocks: nn.Module | list[nn.Module]) -> dict[str, nn.Linear]:
    """Every prunable layer by its name in the model, ``"<block>.<layer>"`` (``"0.self_attn.q_proj"``),
    in forward order; of a model, or of its decoder blocks (a list)."""
    blocks = model_or_blocks if isinstance(model_or_blocks, list) else decoder_blocks(model_or_blocks)
    return {f"{i}.{name}": lin for i, block in enumerate(blocks) for name, lin in prunable_linears(block).items()}


def prunable_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Every prunable layer's weight shape (out, in) by its name in the model (``model_linears``);
    offloaded blocks too (their weights keep their shapes)."""
    return {name: tuple(lin.weight.shape) for name, lin in model_linears(model).items()}


def family(model: nn.Module) -> str:
    """The adapter family (``"llama"``, ``"gemma3"``, ...) or ``"generic"`` for an unknown model type."""
    adapter = ADAPTERS.get(_model_type(model) or "")
    return adapter.family if adapter is not None else "generic"


def needs_bos(model: nn.Module) -> bool:
    """True when every input window must start with BOS (the Gemma families)."""
    adapter = ADAPTERS.get(_model_type(model) or "")
    return bool(adapter and adapter.needs_bos)
