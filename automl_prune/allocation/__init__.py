"""Layerwise sparsity allocation: pure maths from per-block facts to per-block sparsities.

Every allocator returns a list of per-block sparsities whose parameter-weighted mean equals the
target exactly (to float64 rounding) and that lie within ``[lo, hi]`` (default ``[0, 0.99]``):

- :func:`owl_sparsities` (OWL: outlier-weighted, Yin et al. 2024);
- :func:`alpha_sparsities` (AlphaPruning: heavy-tail exponent of the weight spectra, Lu et al. 2024);
- :func:`offset_sparsities` (per-block offsets), :func:`depth_sparsities` (smooth depth schedule).

The per-model facts they read (outlier ratios, spectral exponents, parameter counts) live in
:class:`~automl_prune.allocation.profile.ModelProfile`, computed once per model and statistics.
"""

from .esd import esd_alpha, hill_alpha
from .profile import ModelProfile
from .rules import (
    DEFAULT_BOUNDS,
    alpha_sparsities,
    depth_sparsities,
    match_target,
    offset_sparsities,
    owl_sparsities,
    weighted_mean,
)

__all__ = [
    "DEFAULT_BOUNDS",
    "ModelProfile",
    "alpha_sparsities",
    "depth_sparsities",
    "esd_alpha",
    "hill_alpha",
    "match_target",
    "offset_sparsities",
    "owl_sparsities",
    "weighted_mean",
]
