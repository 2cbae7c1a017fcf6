"""Data sets generated from known factors of variation (ground truth), for the disentanglement
metrics of ``vaelab.disentanglement``."""

from __future__ import annotations

from typing import Protocol

import torch


class GroundTruth(Protocol):
    factor_names: list[str]
    factor_sizes: list[int]

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor: ...  # [n, F] int64 indices
    def observations(self, factors: torch.Tensor) -> torch.Tensor: ...  # [n, C, H, W] float32
