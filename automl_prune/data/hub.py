"""Text from Hugging Face datasets (needs the hub, or the datasets cache)."""

from __future__ import annotations

from typing import Any

from automl_prune.errors import MissingPackageError, UserError
from automl_prune.data.files import pick_text_field

OFFLINE_HINT = ("If the machine is offline, pass --data-dir (or set AUTOML_PRUNE_DATA_DIR) to the folder with "
                "the offline copies of c4 and wikitext2, or use --calib wiki-offline.")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}" if text else type(error).__name__


def load_hub_dataset(path: str, name: str | None = None, *, split: str, note: str = "", **kwargs: Any) -> Any:
    """``datasets.load_dataset(path, name, split=split, **kwargs)``, every failure a UserError.

    ``note`` (a sentence) is put in front of the offline hint in the error message.
    """
    label = path + (f":{name}" if name else "")
    try:
        import datasets
    except ImportError:
        raise MissingPackageError("datasets", f"Loading '{label}' from the Hugging Face hub") from None
    try:
        return datasets.load_dataset(path, name, split=split, **kwargs)
    except Exception as e:  # noqa: BLE001 - hub, network, cache and dataset errors all come here
        raise UserError(f"could not load '{label}' (split '{split}') from the Hugging Face hub "
                        f"({_one_line(e)}). {note + ' ' if note else ''}{OFFLINE_HINT}") from e


def dataset_documents(dataset: Any, text_field: str | None, where: str) -> tuple[Any, str]:
    """The text column of a loaded dataset (lazy, indexable) and the field name used."""
    name = pick_text_field(dataset.column_names, text_field, where)
    return dataset[name], name


def dataset_info(dataset: Any, dataset_id: str, config: str | None, split: str, text_field: str) -> dict[str, Any]:
    """Provenance of a loaded dataset: id, config, split, text field and fingerprint."""
    return {"dataset": dataset_id, "config": config, "split": split, "text_field": text_field,
            "fingerprint": getattr(dataset, "_fingerprint", None)}
