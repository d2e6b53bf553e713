"""Load a causal language model and its tokenizer from an alias, a GGUF file, a folder or a hub id.

``load_model`` is the one entry point. Whatever the source, the model comes back ready for
pruning: in eval mode, gradients off, ``use_cache`` off, on the requested device and dtype.

Spec resolution, in order:

1. an offline alias (``smollm2-135m``, ``gemma3-270m``; see :mod:`.aliases`);
2. a path to a ``.gguf`` file: dequantized once, then cached as safetensors (see :mod:`.gguf_cache`);
3. an existing local folder in Hugging Face layout;
4. otherwise a Hugging Face hub id (``org/name``), loaded with ``from_pretrained``; a spec that
   looks like a path (``/``, ``./``, ``~``, ``.gguf``) but does not exist is a UserError instead.
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from automl_prune.errors import UserError
from automl_prune.models import gguf_cache
from automl_prune.models.aliases import ResolvedAlias, get_alias, is_alias
from automl_prune.models.adapters import decoder_blocks
from automl_prune.models.offload import BlockStore, check_offload, load_streamed

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for pruning, its tokenizer (None when the source has none), and provenance.

    ``info`` keys: spec, path, source (alias|gguf|local|hub), model_type, dtype, device,
    n_params, load_seconds; for GGUF sources also gguf_sha256, cache_path, cache_hit; for aliases
    also alias.
    """

    model: Any
    tokenizer: Any
    info: dict[str, Any] = field(default_factory=dict)
    #: where the decoder blocks' weights live when they are offloaded (models/offload.py), else None
    store: Any = None


def resolve_dtype(dtype: str) -> torch.dtype:
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` -> torch dtype; UserError otherwise."""
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise UserError(f"Unsupported dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> cuda when available, else cpu; any other torch device string is checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise UserError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"Device {device!r} was requested but CUDA is not available; use 'cpu' or 'auto'")
    return dev


def check_model_spec(spec: str) -> None:
    """The checks of a model spec that read no file and reach no network, so that commands run them
    before anything slower (opening text sources): no spec, or a path that does not exist."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError("No model given: pass an alias (smollm2-135m, gemma3-270m), a .gguf file, a folder or a hub id")
    spec = spec.strip()
    path = Path(spec).expanduser()
    if not is_alias(spec) and not path.exists() and _looks_like_path(spec):
        raise UserError(
            f"No such file or folder: {spec}. Pass an existing .gguf file or model folder, "
            "or an offline alias (smollm2-135m, gemma3-270m)."
        )
    problem = _local_problem(path) if path.exists() else None
    if problem:
        raise UserError(problem)


def _local_problem(path: Path) -> str | None:
    """What makes an existing local path no model: a file that is not a .gguf, a folder without config.json."""
    if path.is_file() and path.suffix.lower() != ".gguf":
        return f"{path} is a file but not a .gguf file; pass a .gguf file or a model folder"
    if path.is_dir() and not (path / "config.json").is_file():
        ggufs = sorted(p.name for p in path.glob("*.gguf"))
        hint = f"; it holds {', '.join(ggufs)}: pass that file itself" if ggufs else ""
        return f"{path} is a folder but not a Hugging Face model folder (no config.json){hint}"
    if not path.is_file() and not path.is_dir():
        return f"{path} is neither a file nor a folder; pass a .gguf file or a model folder"
    return None


def _looks_like_path(spec: str) -> bool:
    """True for specs that cannot be hub ids (``org/name``): absolute, relative, ``~``, ``.gguf``."""
    return spec.startswith((".", "~")) or spec.lower().endswith(".gguf") or not _HUB_ID.match(spec)


def _prepare(model: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """Eval mode, no gradients, no KV cache, requested dtype and device."""
    first = next(model.parameters(), None)
    if first is not None and (first.dtype != dtype or first.device != device):
        model = model.to(dtype=dtype, device=device)
    model.eval()
    model.requires_grad_(False)
    _prepare_config(model)
    return model


def _prepare_config(model: Any) -> None:
    """No KV cache (the model and a multimodal model's text config)."""
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    text_config = getattr(model.config, "text_config", None)
    if text_config is not None and hasattr(text_config, "use_cache"):
        text_config.use_cache = False


def _load_pretrained(source: str, dtype: torch.dtype, device: torch.device) -> Any:
    """``AutoModelForCausalLM.from_pretrained`` without holding the weights twice."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "low_cpu_mem_usage": True}
    if device.type != "cpu":
        kwargs["device_map"] = {"": str(device)}  # load straight onto the accelerator
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json", "spiece.model")


def _load_tokenizer(source: str) -> Any:
    """The tokenizer saved with a model, or None when the source has none.

    A local folder without tokenizer files gets None (AutoTokenizer would otherwise build an
    empty tokenizer from the model config alone).
    """
    from transformers import AutoTokenizer

    folder = Path(source)
    if folder.is_dir() and not any((folder / name).is_file() for name in _TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _load_folder(folder: Path, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    problem = _local_problem(folder)
    if problem:
        raise UserError(problem)
    try:
        model = _load_pretrained(str(folder), dtype, device)
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"Could not load the model folder {folder}: {exc}") from exc
    return model, _load_tokenizer(str(folder))


def _load_hub(spec: str, dtype: torch.dtype, device: torch.device) -> tuple[Any, Any]:
    try:
        model = _load_pretrained(spec, dtype, device)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"Could not load {spec!r} from the Hugging Face hub ({str(exc).splitlines()[0]}). "
            "Without hub access pass a local folder, a .gguf file, or an offline alias "
            "(smollm2-135m, gemma3-270m)."
        ) from exc
    return model, _load_tokenizer(spec)


def _gguf_source(
    cache_root: Path,
    *,
    gguf_path: Path | None = None,
    sha256: str | None = None,
    locate: Callable[[Path], ResolvedAlias] | None = None,
) -> tuple[Path, dict[str, Any], tuple[Any, Any] | None]:
    """The safetensors cache folder of a GGUF file, built first when needed: (folder, info, the
    dequantized (model, tokenizer) when it was just built, else None).

    Either ``gguf_path`` is given, or ``locate`` (an alias's resolver), which is called only when
    the GGUF file itself is needed: an alias with a published ``sha256`` and a complete cache
    loads without touching (or assembling) its GGUF file.
    """
    if sha256 is None or not gguf_cache.is_complete(gguf_cache.cache_folder(cache_root, sha256), sha256):
        if gguf_path is None:
            resolved = locate(cache_root)
            gguf_path, sha256 = resolved.path, resolved.sha256 or sha256
        sha256 = sha256 or gguf_cache.sha256_file(gguf_path)
    folder = gguf_cache.cache_folder(cache_root, sha256)
    info = {"gguf_sha256": sha256, "cache_path": str(folder), "gguf_file": str(gguf_path) if gguf_path else None}
    if gguf_cache.is_complete(folder, sha256):
        return folder, {**info, "cache_hit": True}, None
    gguf_cache.remove_folder(folder)  # absent, incomplete or corrupt
    log.info("dequantizing %s to float32 once; the copy is cached in %s", gguf_path.name, folder)
    model, tokenizer = gguf_cache.dequantize_gguf(gguf_path)
    gguf_cache.write_cache(model, tokenizer, folder, sha256=sha256, gguf_path=gguf_path)
    return folder, {**info, "cache_hit": False}, (model, tokenizer)


def _load_gguf(cache_root: Path, dtype: torch.dtype, device: torch.device, **where) -> tuple[Any, Any, dict[str, Any]]:
    """Load from the safetensors cache of a GGUF file, building the cache first when needed."""
    folder, info, built = _gguf_source(cache_root, **where)
    if built is not None:
        return built[0], built[1], info
    return _load_pretrained(str(folder), dtype, device), _load_tokenizer(str(folder)), info


def _load_offloaded(spec: str, path: Path, cache_root: Path, dtype: torch.dtype, device: torch.device, offload: str,
                    offload_folder) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(model, tokenizer, store, info) with the decoder blocks offloaded: read block by block from the
    checkpoint (its safetensors files memory-mapped) where the source is a folder of them, else
    loaded whole once and then offloaded."""
    info: dict[str, Any] = {}
    folder, whole = None, None
    if is_alias(spec) and not path.exists():
        alias = get_alias(spec)
        gguf_cache.require_gguf_package()
        folder, extra, whole = _gguf_source(cache_root, sha256=alias.sha256, locate=alias.locate)
        info.update(source="alias", alias=alias.name, path=extra["gguf_file"] or extra["cache_path"], **extra)
    elif path.is_file():  # a .gguf: check_model_spec refused any other file
        gguf_cache.require_gguf_package()
        folder, extra, whole = _gguf_source(cache_root, gguf_path=path.resolve())
        info.update(source="gguf", path=str(path.resolve()), **extra)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            _load_folder(path.resolve(), dtype, device)  # the folder's own error
        folder = path.resolve()
        info.update(source="local", path=str(folder))
    else:  # the hub: its files fetched into the hub's cache (nothing loaded), then read block by block
        folder = _hub_snapshot(spec)
        info.update(source="hub", path=spec, snapshot=str(folder))
    streamed = None
    if folder is not None:
        del whole  # a GGUF just dequantized: read back from its cache block by block instead
        streamed = load_streamed(folder, dtype, device, offload, offload_folder=offload_folder)
        tokenizer = _load_tokenizer(str(folder))
        # checkpoint names that are not the model's: loaded whole on the host (never whole on the device)
        whole = None if streamed is not None else (_load_pretrained(str(folder), dtype, torch.device("cpu")), tokenizer)
    if streamed is not None:
        model, store = streamed
        info["offload_load"] = "streamed from the checkpoint"
    else:
        model, tokenizer = whole
        model = _prepare(model, dtype, torch.device("cpu"))
        store = BlockStore.from_model(model, decoder_blocks(model), offload, folder=offload_folder, device=device)
        info["offload_load"] = "loaded whole on the host, then offloaded"
    return model, tokenizer, store, info


def _hub_snapshot(spec: str) -> Path:
    """The local folder of a hub model's files (downloaded once into the hub's cache)."""
    from huggingface_hub import snapshot_download  # deferred: only a hub id needs it

    try:
        return Path(snapshot_download(spec, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]))
    except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated: one clear error
        raise UserError(
            f"Could not fetch {spec!r} from the Hugging Face hub ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}). "
            "Without hub access pass a local folder, a .gguf file, or an offline alias (smollm2-135m, gemma3-270m)."
        ) from exc


def load_model(
    spec: str,
    *,
    dtype: str = "float32",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    offload: str = "none",
    offload_folder: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a causal LM for pruning from an alias, a ``.gguf`` file, a local folder or a hub id.

    Args:
        spec: ``smollm2-135m`` / ``gemma3-270m``, a path to a ``.gguf`` file or to a Hugging Face
            model folder, or a hub id such as ``HuggingFaceTB/SmolLM2-135M``.
        dtype: ``float32``, ``float16`` or ``bfloat16``.
        device: ``auto`` (cuda if available, else cpu), ``cpu``, ``cuda``, ``cuda:N``.
        cache_dir: root of the GGUF cache; default ``$AUTOML_PRUNE_CACHE`` or ``~/.cache/automl-prune``.
        offload: ``none`` (the whole model on the device), ``cpu`` or ``disk`` (the decoder blocks'
            weights off the device, one block brought in at a time: models/offload.py; the
            result's ``store`` holds them).
        offload_folder: where ``disk`` writes the blocks it changes (default: a temporary folder).

    Raises:
        UserError: bad dtype or device, missing path, unloadable model, unreachable hub.
        MissingPackageError: an alias package or ``gguf`` is not installed.
    """
    check_model_spec(spec)
    spec = spec.strip()
    torch_dtype = resolve_dtype(dtype)
    torch_device = resolve_device(device)
    cache_root = gguf_cache.default_cache_dir(cache_dir)
    start = time.perf_counter()
    info: dict[str, Any] = {"spec": spec}

    path = Path(spec).expanduser()
    store = None
    if check_offload(offload) != "none":
        model, tokenizer, store, info_extra = _load_offloaded(spec, path, cache_root, torch_dtype, torch_device, offload,
                                                              offload_folder)
        info.update(info_extra)
    elif is_alias(spec) and not path.exists():
        alias = get_alias(spec)
        gguf_cache.require_gguf_package()
        model, tokenizer, extra = _load_gguf(
            cache_root, torch_dtype, torch_device, sha256=alias.sha256, locate=alias.locate
        )
        info.update(source="alias", alias=alias.name, path=extra["gguf_file"] or extra["cache_path"], **extra)
    elif path.is_file():  # a .gguf: check_model_spec refused any other file
        gguf_cache.require_gguf_package()
        model, tokenizer, extra = _load_gguf(cache_root, torch_dtype, torch_device, gguf_path=path.resolve())
        info.update(source="gguf", path=str(path.resolve()), **extra)
    elif path.is_dir():
        model, tokenizer = _load_folder(path.resolve(), torch_dtype, torch_device)
        info.update(source="local", path=str(path.resolve()))
    else:
        model, tokenizer = _load_hub(spec, torch_dtype, torch_device)
        info.update(source="hub", path=spec)

    if store is None:
        model = _prepare(model, torch_dtype, torch_device)
    else:
        model.eval()
        model.requires_grad_(False)
        _prepare_config(model)
        info.update(offload=store.describe())
    info.update(
        model_type=getattr(model.config, "model_type", None),
        model_class=type(model).__name__,
        dtype=str(torch_dtype).removeprefix("torch."),
        device=str(torch_device),
        n_params=sum(p.numel() for p in model.parameters()),
        load_seconds=round(time.perf_counter() - start, 3),
    )
    return LoadedModel(model=model, tokenizer=tokenizer, info=info, store=store)
