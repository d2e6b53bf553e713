"""automl-prune: AutoML search over pruning metrics, sparsity allocations and patterns for LLMs."""

__version__ = "0.1.0"
