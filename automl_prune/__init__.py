"""automl-prune: AutoML search over pruning metrics, sparsity allocations and patterns for LLMs.

The Python API (automl_prune/api.py), one import away::

    import automl_prune as ap
    model = ap.load("smollm2-135m")
    pruned = ap.prune(model, "wanda", sparsity=0.5, calibration=ap.Calibration(source="wiki-offline", nsamples=32, seqlen=512))
    ap.evaluate(model, ap.Heldout(source="wiki-offline", seqlen=1024, windows=8)).ppl
    ap.search("study.yaml", out="runs/study")
"""

from .version import __version__

__all__ = ["Calibration", "Heldout", "LoadedModel", "METHODS", "Perplexity", "PruneResult", "PruningPlan", "QUICK",
           "SearchResult", "Statistics", "__version__", "as_plan", "calibrate", "evaluate", "load", "prune", "search"]


def __getattr__(name: str):
    if name in __all__:
        from . import api  # deferred: `import automl_prune` stays light (the CLI answers --help at once)

        return getattr(api, name)
    raise AttributeError(f"module 'automl_prune' has no attribute {name!r}")
