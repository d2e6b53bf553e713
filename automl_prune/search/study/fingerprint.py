"""The study fingerprint: what the values of a study's trials depend on, stored with the study.

A resumed study must be the same experiment: the same model, calibration and probe windows,
held-out text, space (its metric, allocation, pattern and reconstruction), objectives and searcher.
The fingerprint is computed from the config alone (no model is loaded for it) and stored in the
study's attributes when the study is created; a run whose fingerprint differs is refused before
the model loads, naming what differs. Budget, executor, output and final-comparison settings may
change between runs of one study.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...errors import UserError
from .config import StudyConfig
from .searcher_configs import flat_dump

ATTR = "fingerprint"


def model_identity(spec: str) -> dict:
    """The model as named, and for a local folder or file the names and sizes of its files and the
    hash of its config.json (cheap: no weights are read)."""
    path = Path(spec).expanduser()
    if not path.exists():
        return {"name": spec}  # an offline alias or a hub id: the name says which weights
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    out = {"name": str(path.resolve()), "files": {p.name: p.stat().st_size for p in files}}
    config = path / "config.json" if path.is_dir() else None
    if config is not None and config.exists():
        out["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()[:16]
    return out


def study_fingerprint(config: StudyConfig) -> dict:
    """The parts of the config that a trial's value depends on, keyed by what a user calls them."""
    dump = config.model_dump(mode="json")
    return {
        "model": model_identity(config.model),
        "dtype": dump["dtype"],
        "calibration": dump["calibration"],
        "probe": dump["probe"],
        "heldout": dump["heldout"],
        "space": dump["space"],
        "objectives": dump["objectives"],
        "searcher": flat_dump(config.searcher),  # the flat form older studies stored
    }


def digest(fingerprint: dict) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()[:16]


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 90 else text[:87] + "..."


def check_fingerprint(study, config: StudyConfig, where: str) -> None:
    """Store the fingerprint in a new study (or one from before fingerprints were kept); refuse a
    study whose stored fingerprint differs from the config's, naming the parts that differ."""
    mine = study_fingerprint(config)
    stored = study.user_attrs.get(ATTR)
    if stored is None:
        study.set_user_attr(ATTR, mine)
        return
    differ = [k for k in sorted(set(mine) | set(stored)) if mine.get(k) != stored.get(k)]
    if not differ:
        return
    detail = "; ".join(f"{k}: the study has {_short(stored.get(k))}, this run {_short(mine.get(k))}" for k in differ[:3])
    raise UserError(f"{where} holds a study of another experiment (differs in {', '.join(differ)}: {detail}); "
                    "resume it with its own settings (config.yaml in its folder), or start a new study with another "
                    "--out folder or study_name")


WEIGHTS_ATTR = "model_weights"


def check_weights(study, weights: str | None, where: str) -> None:
    """After the model loaded: its weights' fingerprint (the statistics cache's, a hash of the
    weights) must be the study's. The config fingerprint names a local model by its files' sizes,
    so weights changed in place (same sizes) are caught here, before any trial runs."""
    if not weights:
        return
    stored = study.user_attrs.get(WEIGHTS_ATTR)
    if stored is None:
        study.set_user_attr(WEIGHTS_ATTR, weights)
    elif stored != weights:
        raise UserError(f"{where} was run on other weights (fingerprint {stored[:12]}..., this model {weights[:12]}...): "
                        "the model files changed since; start a new study with another --out folder or study_name")
