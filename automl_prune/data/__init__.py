"""Calibration and evaluation text: token windows cut from C4, WikiText-2, offline Wikipedia
lead sections, local text files or Hugging Face datasets, following the Wanda/SparseGPT protocols.

    windows = calibration_windows("c4", tokenizer, nsamples=32, seqlen=512, data_dir="../shared/data")
    windows.input_ids.shape   # (32, 512)
    windows.info              # provenance, JSON-serialisable, with windows_sha256

Open a source before loading a model with ``check_source``: its errors name the source.
"""

from automl_prune.data.api import calibration_windows, evaluation_windows, fresh_windows
from automl_prune.data.check import check_source
from automl_prune.data.sources import DATA_DIR_ENV, KNOWN_SOURCES, resolve_data_dir
from automl_prune.data.windows import TokenWindows

__all__ = ["DATA_DIR_ENV", "KNOWN_SOURCES", "TokenWindows", "calibration_windows", "check_source", "evaluation_windows",
           "fresh_windows", "resolve_data_dir"]
