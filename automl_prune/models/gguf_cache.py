"""A GGUF file dequantized once, then kept as a safetensors Hugging Face folder.

transformers loads a GGUF checkpoint by dequantizing every tensor to float32, which takes tens of
seconds even for a 135M model. We do that once per GGUF file and save the result (config, weights,
tokenizer) under ``<cache>/gguf/<sha256[:16]>/``. The folder is written to a temporary sibling
and renamed into place, and carries a marker file (written last) that records the GGUF hash and
the size of every file; a folder whose marker is missing or disagrees with the files on disk is
treated as absent and rebuilt.

Every load checks the file sizes and parses the safetensors headers; the tensor bytes are not
hashed (that would cost gigabytes of reading per load), so a same-size in-place corruption of the
weights is not detected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from automl_prune.errors import MissingPackageError, UserError

#: Name of the marker file that says a cache folder is complete.
MARKER = "automl_prune_gguf_cache.json"
#: Bumped when the folder layout changes; older folders are rebuilt.
CACHE_FORMAT = 1
_CHUNK = 8 * 1024 * 1024


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache root: ``cache_dir``, else ``$AUTOML_PRUNE_CACHE``, else ``~/.cache/automl-prune``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("AUTOML_PRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "automl-prune"


def sha256_file(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks (never the whole file in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def cache_folder(cache_root: Path, sha256: str) -> Path:
    """Where the dequantized copy of the GGUF file with this hash lives."""
    return Path(cache_root) / "gguf" / sha256[:16]


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The marker of a cache folder, or None when it is missing or unreadable."""
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def is_complete(folder: Path, sha256: str) -> bool:
    """True when ``folder`` holds a finished cache of the GGUF file with hash ``sha256``.

    Checks the marker (format, hash), that every recorded file exists with its recorded size,
    and that every safetensors header parses (cheap: the tensor data are not read).
    """
    marker = read_marker(folder)
    if not marker or marker.get("format") != CACHE_FORMAT or marker.get("gguf_sha256") != sha256:
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for name, size in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            return False
    return all(_safetensors_readable(folder / name) for name in files if name.endswith(".safetensors"))


def _safetensors_readable(path: Path) -> bool:
    """True when the safetensors header of ``path`` parses and its tensors fit in the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception:  # safetensors raises its own SafetensorError (and OSError) for bad files
        return False
    return True


def remove_folder(folder: Path) -> None:
    """Delete a (possibly corrupt) cache folder: renamed aside first so that no reader sees half of it."""
    if not folder.exists():
        return
    trash = folder.with_name(f".trash-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def require_gguf_package() -> None:
    """Raise MissingPackageError unless the ``gguf`` package (used by transformers) is importable."""
    try:
        import gguf  # noqa: F401
    except ImportError as exc:
        raise MissingPackageError("gguf", "Loading a GGUF model", "pip install gguf") from exc


def dequantize_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """Load a GGUF file with transformers, dequantized to float32; return (model, tokenizer).

    The GGUF quantizer is detached from the model so that it behaves (and saves) like an ordinary
    float model.
    """
    require_gguf_package()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, low_cpu_mem_usage=True
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except ImportError as exc:  # transformers names the missing package in its message
        raise UserError(f"Loading the GGUF file {gguf_path} needs a package that is missing: {exc}") from exc
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(
            f"transformers could not load the GGUF file {gguf_path}: {exc}. "
            "Only architectures that transformers can dequantize are supported."
        ) from exc
    strip_quantizer(model)
    return model, tokenizer


def strip_quantizer(model: Any) -> None:
    """Forget that ``model`` came from a quantized checkpoint (its weights are already dequantized).

    Without this, ``save_pretrained`` refuses the model and ``.half()`` / ``.float()`` raise.
    Uses the quantizer's own ``remove_quantization_config`` where it exists, then makes sure.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and hasattr(quantizer, "remove_quantization_config"):
        quantizer.remove_quantization_config(model)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for module in model.modules():  # the flags are also set on nested PreTrainedModels
        if getattr(module, "is_quantized", False) is True:
            module.is_quantized = False
        if "quantization_method" in vars(module):
            del module.quantization_method
        config = getattr(module, "config", None)
        if config is not None:
            if hasattr(config, "quantization_config"):
                delattr(config, "quantization_config")
            if getattr(config, "_is_quantized", False):
                config._is_quantized = False


def write_cache(model: Any, tokenizer: Any, folder: Path, *, sha256: str, gguf_path: Path) -> Path:
    """Save ``model`` and ``tokenizer`` atomically as the cache folder for ``sha256``.

    Writes into a temporary sibling folder, adds the marker last, then renames it into place. A
    stale folder at the target is removed first; if another process finished the same folder
    meanwhile, its copy is kept and ours discarded.
    """
    import transformers

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".tmp-{folder.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = {
            "format": CACHE_FORMAT,
            "gguf_sha256": sha256,
            "gguf_file": str(gguf_path),
            "model_type": getattr(model.config, "model_type", None),
            "transformers": transformers.__version__,
            "files": files,
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        if folder.exists():
            remove_folder(folder)
        try:
            tmp.rename(folder)
        except OSError:
            if not is_complete(folder, sha256):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
