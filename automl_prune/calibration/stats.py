"""Per-layer input statistics of a linear layer: the container and its pure-tensor accumulation.

For a linear layer y = x W^T with W of shape (out, in), the statistics describe the inputs X
(tokens x in) seen over the calibration windows. Sums are accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LinearStats:
    """Statistics of the inputs of one linear layer (all vectors have length ``in_features``)."""

    n_tokens: int
    n_seqs: int
    sum: torch.Tensor  # float64, sum_t x_tj
    sumsq: torch.Tensor  # float64, sum_t x_tj^2
    abs_sum: torch.Tensor  # float64, sum_t |x_tj|
    absmax: torch.Tensor  # float32, max_t |x_tj|
    gram: torch.Tensor | None = field(default=None)  # float32 (in, in), X^T X, optional (as SparseGPT keeps H)

    # ----- derived per-channel statistics -------------------------------------------------
    @property
    def in_features(self) -> int:
        return int(self.sumsq.numel())

    @property
    def l2(self) -> torch.Tensor:
        """||X_j||_2 over all calibration tokens (Wanda's activation norm)."""
        return self.sumsq.sqrt()

    @property
    def scaler_row(self) -> torch.Tensor:
        """Wanda's ``scaler_row``: sum of squares divided by the number of sequences."""
        return self.sumsq / max(self.n_seqs, 1)

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.n_tokens, 1)

    @property
    def var(self) -> torch.Tensor:
        """Per-token (population) variance of each input channel."""
        n = max(self.n_tokens, 1)
        return (self.sumsq / n - self.mean.square()).clamp_min(0.0)

    @property
    def std(self) -> torch.Tensor:
        return self.var.sqrt()

    @property
    def rms(self) -> torch.Tensor:
        return (self.sumsq / max(self.n_tokens, 1)).sqrt()

    @property
    def mean_abs(self) -> torch.Tensor:
        return self.abs_sum / max(self.n_tokens, 1)

    def activation(self, name: str) -> torch.Tensor:
        """An activation statistic by name: l2, std, rms, mean_abs, absmax, scaler_row."""
        table = {
            "l2": lambda: self.l2,
            "std": lambda: self.std,
            "rms": lambda: self.rms,
            "mean_abs": lambda: self.mean_abs,
            "absmax": lambda: self.absmax.double(),
            "scaler_row": lambda: self.scaler_row,
        }
        if name not in table:
            raise ValueError(f"unknown activation statistic {name!r}; choose one of {sorted(table)}")
        return table[name]()

    # ----- accumulation ---------------------------------------------------------------------
    @classmethod
    def empty(cls, in_features: int, *, with_gram: bool = False, device: torch.device | str = "cpu") -> "LinearStats":
        z = lambda: torch.zeros(in_features, dtype=torch.float64, device=device)  # noqa: E731
        gram = torch.zeros(in_features, in_features, dtype=torch.float32, device=device) if with_gram else None
        return cls(0, 0, z(), z(), z(), torch.zeros(in_features, dtype=torch.float32, device=device), gram)

    def update(self, x: torch.Tensor, n_seqs: int) -> None:
        """Add a batch of inputs ``x`` (..., in_features) coming from ``n_seqs`` sequences."""
        x2 = x.reshape(-1, x.shape[-1])
        xf = x2.float()
        self.n_tokens += int(x2.shape[0])
        self.n_seqs += int(n_seqs)
        self.sum += xf.sum(0, dtype=torch.float64)
        self.sumsq += xf.square().sum(0, dtype=torch.float64)
        ax = xf.abs()
        self.abs_sum += ax.sum(0, dtype=torch.float64)
        self.absmax = torch.maximum(self.absmax, ax.amax(0))
        if self.gram is not None:
            # float32, as the SparseGPT reference accumulates its Hessian; a float64 Gram of a
            # 7B model would not fit in memory
            self.gram.addmm_(xf.T, xf)

    def to(self, device: torch.device | str) -> "LinearStats":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return LinearStats(self.n_tokens, self.n_seqs, mv(self.sum), mv(self.sumsq), mv(self.abs_sum), mv(self.absmax), mv(self.gram))
