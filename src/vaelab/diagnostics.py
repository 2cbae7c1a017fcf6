"""Diagnostics of a model's training signal."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from vaelab.models.vae import VAE


def encoder_gradient_samples(model: VAE, x: Tensor, num_draws: int) -> Tensor:
    """The encoder's gradient of the training loss on the fixed batch ``x``, once per fresh draw
    of the latent samples: [num_draws, P]. Uses the model's own estimator (``model.estimator``)
    and leaves the model's parameters, gradients and baseline as they were."""
    was_training = model.training
    model.train()
    baseline = model.baseline.clone()
    saved = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    params = model.inference_parameters()
    draws = []
    for _ in range(num_draws):
        model.zero_grad(set_to_none=True)
        model.objective(x)["loss"].backward()
        draws.append(torch.cat([p.grad.flatten() for p in params]))
        model.baseline.copy_(baseline)  # every draw sees the same baseline
    for p, g in zip(model.parameters(), saved):
        p.grad = g
    model.train(was_training)
    return torch.stack(draws)


def gradient_variance(draws: Tensor) -> dict[str, float]:
    """Summary of [S, P] gradient draws: the mean per-coordinate variance, the squared norm of
    the mean (the signal), and their ratio per coordinate (a signal-to-noise ratio)."""
    variance = draws.var(0).mean().item()
    signal = draws.mean(0).pow(2).mean().item()
    return {"grad_variance": variance, "grad_mean_sq": signal, "snr": signal / variance if variance else float("inf")}
