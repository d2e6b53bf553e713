"""What every result records: versions, machine and time."""

from __future__ import annotations

import datetime as _dt
import platform
from importlib import metadata

import torch

from .version import __version__

_PACKAGES = ("torch", "transformers", "safetensors", "datasets", "optuna", "pymoo", "ray", "gguf", "accelerate")


def versions() -> dict[str, str]:
    out = {"automl-prune": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def environment(device: str | torch.device = "cpu") -> dict:
    dev = torch.device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    return {
        "versions": versions(),
        "platform": platform.platform(),
        "device": str(dev),
        "gpu": gpu,
        "threads": torch.get_num_threads(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
