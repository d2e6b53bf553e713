"""A layer's output reconstruction error from its Gram matrix (no forward pass)."""

from __future__ import annotations

import torch


def reconstruction_error(weight: torch.Tensor, dense: torch.Tensor, gram: torch.Tensor) -> float:
    """||X (W_dense - W)^T||_F^2 = trace(dW G dW^T) with G = X^T X, in float64."""
    dW = dense.detach().double() - weight.detach().double()
    return float(((dW @ gram.detach().double()) * dW).sum())
