"""Training objectives. Each takes per-example terms ([B]) and returns scalars averaged over
the batch, in nats per example (summed over data dimensions), the literature's convention."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def elbo(log_px_given_z: Tensor, kl: Tensor) -> Tensor:
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), per example [B] (one-sample estimate of
    the first term, closed form for the second; AEVB eq. 7)."""
    return log_px_given_z - kl


def beta_vae_loss(log_px_given_z: Tensor, kl: Tensor, beta: float) -> Tensor:
    """-E_q[log p(x|z)] + beta * KL, averaged over the batch; beta = 1 is the negative ELBO."""
    return (-log_px_given_z + beta * kl).mean()


def iwae_bound(log_w: Tensor) -> Tensor:
    """L_k = log (1/k) sum_k w_k from log-weights [k, B], with logsumexp; [B] (IWAE eq. 8).
    k = 1 is the single-sample ELBO; L_k rises with k towards log p(x)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def bits_per_dim(nats: Tensor, num_dims: int, offset_nats_per_dim: float = 0.0) -> Tensor:
    """Convert a negative log-likelihood in nats per example to bits per dimension.

    ``offset_nats_per_dim`` is log(256) for a continuous density on [0, 1]-scaled 8-bit data,
    turning it into the density on the 0..255 grid that papers report; 0 for discrete data.
    """
    return (nats / num_dims + offset_nats_per_dim) / math.log(2)
