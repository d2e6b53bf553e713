"""Models: loading (aliases, GGUF with a safetensors cache, local folders, hub ids) and adapters
that find the decoder blocks and prunable linear layers of any supported family."""

from automl_prune.models.adapters import (
    ADAPTERS,
    block_path,
    decoder_blocks,
    family,
    needs_bos,
    prunable_linears,
)
from automl_prune.models.aliases import ALIASES
from automl_prune.models.loading import LoadedModel, load_model

__all__ = [
    "ADAPTERS",
    "ALIASES",
    "LoadedModel",
    "block_path",
    "decoder_blocks",
    "family",
    "load_model",
    "needs_bos",
    "prunable_linears",
]
