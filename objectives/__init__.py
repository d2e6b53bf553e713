"""Objectives a candidate plan is scored by.

Importing this package registers every objective: ``make_objective(name, **params)`` from
:mod:`objectives.base` finds them by name (``layer_recon``, ``model_recon``, ``kl``, ``ppl``,
``calib_ppl``, ``sparsity``, ``zero_shot``).
"""

from . import kl, layer_recon, model_recon, perplexity, sparsity, zero_shot  # noqa: F401  (registration)
from .base import Objective, Reporter, TrialStopped, available, make_objective, register
from .common import ObjectiveError

__all__ = ["Objective", "ObjectiveError", "Reporter", "TrialStopped", "available", "make_objective", "register"]
