"""Posteriors, priors and likelihoods: the probabilistic pieces of a VAE.

Shapes: ``B`` batch, ``L`` latent size, ``S`` number of samples, ``C, H, W`` image.
Every log-density is summed over its event dimensions and returned per example, in nats,
and is computed in float32 even when the networks run in reduced precision.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOG_2PI = math.log(2 * math.pi)

# exp(LOGVAR_LIMIT) must stay finite in bf16/fp16 and well inside float32; ±30 covers
# standard deviations from 3e-7 to 3e6, wider than any trained posterior needs.
LOGVAR_LIMIT = 30.0


class DiagonalGaussian:
    """q(z|x) = N(z; mu, diag(exp(logvar))), the AEVB posterior.

    ``mu`` and ``logvar`` are [B, L]. Sampling uses the reparameterization
    z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), so gradients reach the encoder.
    """

    def __init__(self, mu: Tensor, logvar: Tensor):
        self.mu = mu.float()
        # Exact inside the limits (so q is what the encoder says); a guard against overflow outside.
        self.logvar = logvar.float().clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, num_samples: int | None = None) -> Tensor:
        """[B, L] reparameterized sample, or [S, B, L] when ``num_samples`` is given."""
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        eps = torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.std * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) summed over L; ``z`` is [..., B, L], result [..., B]."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 / self.logvar.exp()).sum(-1)

    def kl_to_standard_normal_per_dim(self) -> Tensor:
        """KL(q || N(0, I)) per latent dimension, [B, L]:
        0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)  (AEVB paper, Appendix B)."""
        return 0.5 * (self.mu**2 + self.logvar.exp() - 1.0 - self.logvar)

    def kl_to_standard_normal(self) -> Tensor:
        """Closed-form KL(q || N(0, I)) summed over latents, [B]."""
        return self.kl_to_standard_normal_per_dim().sum(-1)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over ``latent_dim`` dimensions."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def sample(self, num_samples: int, device: torch.device | str = "cpu") -> Tensor:
        return torch.randn(num_samples, self.latent_dim, device=device)

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, I) summed over L; [..., L] -> [...]."""
        return -0.5 * (LOG_2PI + z.float() ** 2).sum(-1)


class Likelihood(nn.Module):
    """p(x|z) given the decoder's output ``params`` ([..., C, H, W]) for data ``x`` [B, C, H, W]."""

    # Added to nats/dim before converting to bits/dim (see objectives.bits_per_dim).
    bpd_offset_nats_per_dim = 0.0

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) summed over pixels, [...] (one value per example and sample)."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z], the image to show for a reconstruction or a sample."""
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)), computed on logits for stability."""

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        x = x.float().expand_as(params)
        nll = F.binary_cross_entropy_with_logits(params.float(), x, reduction="none")
        return -nll.flatten(-3).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params.float())


class GaussianLikelihood(Likelihood):
    """p(x|z) = prod_i N(x_i; mu_i, sigma^2) with the decoder giving mu.

    ``learn_sigma``: ``none`` keeps sigma fixed at ``sigma``; ``global`` learns one sigma;
    ``pixel`` learns one sigma per pixel (``image_shape`` is then required).
    A density on [0, 1]-scaled 8-bit data: bits/dim add log(256) to compare with papers.
    """

    bpd_offset_nats_per_dim = math.log(256)

    def __init__(self, sigma: float = 1.0, learn_sigma: str = "none", image_shape=None):
        super().__init__()
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma == "none":
            self.register_buffer("log_sigma", log_sigma)
        elif learn_sigma == "global":
            self.log_sigma = nn.Parameter(log_sigma)
        elif learn_sigma == "pixel":
            self.log_sigma = nn.Parameter(log_sigma.expand(*image_shape).clone())
        else:
            raise ValueError(f"learn_sigma must be none, global or pixel, got {learn_sigma!r}")

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mu = params.float()
        # Bounded below so a learned sigma cannot shrink to 0 and send the likelihood to infinity.
        log_sigma = self.log_sigma.float().clamp(min=-7.0)
        logp = -0.5 * (LOG_2PI + 2 * log_sigma + ((x.float() - mu) / log_sigma.exp()) ** 2)
        return logp.flatten(-3).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        return params.float()


def build_likelihood(name: str, image_shape, sigma: float = 1.0, learn_sigma: str = "none") -> Likelihood:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(sigma=sigma, learn_sigma=learn_sigma, image_shape=image_shape)
    raise ValueError(f"unknown likelihood {name!r}: use bernoulli or gaussian")
