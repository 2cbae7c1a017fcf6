"""A second stochastic layer above the VAE's latent (``model.top_latents`` > 0): the two-layer
model of Burda et al. 2016 (section 5), a deep latent Gaussian model (Rezende et al. 2014) of two
layers,

    p(x, z1, z2) = p(x|z1) p(z1|z2) p(z2),   p(z2) = N(0, I),   p(z1|z2) = N(m(z2), diag s^2(z2)),
    q(z1, z2|x)  = q(z1|x) q(z2|z1),         both diagonal Gaussians,

with x -> z1 through the ``net`` group's encoder and decoder, and z1 <-> z2 through MLPs of
``top_hidden`` units.

The rest of vaelab sees one latent z = [z1, z2] of L1 + L2 dimensions: ``TwoLayerPosterior`` draws
it and gives log q(z|x) = log q(z1|x) + log q(z2|z1), ``TwoLayerPrior`` gives
log p(z) = log p(z1|z2) + log p(z2), and the decoder reads z1. So the ELBO, the k-sample bound
log (1/k) sum_k p(x, z_k) / q(z_k|x) that IWAE trains, and eval.py's importance sampler are those
of the whole hierarchy, both layers sampled, with no code of their own. Neither density has a
closed-form KL: the KL is the Monte-Carlo estimate log q(z|x) - log p(z) at the sampled z.

Shapes: ``B`` batch, ``S`` samples per example, z [B, L1 + L2] or [S, B, L1 + L2].
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from vaelab.distributions import DiagonalGaussian
from vaelab.nets import mlp
from vaelab.priors import StandardNormalPrior, samples_of

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


def gaussian_layer(n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> nn.Sequential:
    """An MLP from ``n_in`` values to the (mu, log sigma^2) of ``n_out`` Gaussian latents."""
    return mlp([n_in, *hidden, 2 * n_out], activation)


class TwoLayerPosterior:
    """q(z1, z2|x) = q(z1|x) q(z2|z1) over z = [z1, z2]. ``first`` is q(z1|x) [B, L1]; ``upward``
    maps z1 to the parameters of q(z2|z1). ``mu``: [mu1, mu2(mu1)], the second layer's mean taken
    at the first layer's mean (where q puts its mass; E_q[z2|x] itself has no closed form); ``std``
    likewise."""

    gaussian = False  # no closed-form KL: the prior's kl() estimates it
    kl_is_sum_per_dim = False

    def __init__(self, first: DiagonalGaussian, upward: nn.Module):
        self.first, self.upward = first, upward

    def second(self, z1: Tensor) -> DiagonalGaussian:
        """q(z2|z1), batched like z1 (in float32: a density compared with float32 samples)."""
        with torch.autocast(z1.device.type, enabled=False):
            return DiagonalGaussian.from_params(self.upward(z1.float()))

    @property
    def mu(self) -> Tensor:
        return torch.cat([self.first.mu, self.second(self.first.mu).mu], -1)

    @property
    def std(self) -> Tensor:
        return torch.cat([self.first.std, self.second(self.first.mu).std], -1)

    def rsample_with_log_prob(self, num_samples: int | None = None) -> tuple[Tensor, Tensor]:
        """z1 ~ q(z1|x), then z2 ~ q(z2|z1) for each z1 (ancestral, reparameterized): z [B, L1 + L2]
        ([S, B, L1 + L2]) and log q(z|x) [B] ([S, B])."""
        z1, log_q1 = self.first.rsample_with_log_prob(num_samples)
        z2, log_q2 = self.second(z1).rsample_with_log_prob()
        return torch.cat([z1, z2], -1), log_q1 + log_q2

    def rsample(self, num_samples: int | None = None) -> Tensor:
        return self.rsample_with_log_prob(num_samples)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z1|x) + log q(z2|z1) at any z [..., B, L1 + L2]."""
        z1, z2 = z.split([self.first.mu.shape[-1], z.shape[-1] - self.first.mu.shape[-1]], -1)
        return self.first.log_prob(z1) + self.second(z1).log_prob(z2)


class TwoLayerPrior(nn.Module):
    """p(z1, z2) = p(z1|z2) N(z2; 0, I) over z = [z1, z2]; ``downward`` maps z2 to the parameters
    of p(z1|z2). The contract of ``vaelab.priors`` (log_prob, sample, kl, held), without
    per-dimension terms: the marginal of z1 is a continuous mixture with no density to evaluate."""

    closed_form = False
    has_pseudo_inputs = False

    def __init__(self, first_dim: int, top_dim: int, hidden: Sequence[int], activation: str):
        super().__init__()
        self.first_dim, self.top_dim = first_dim, top_dim
        self.top = StandardNormalPrior(top_dim)  # p(z2)
        self.downward = gaussian_layer(top_dim, hidden, first_dim, activation)

    def conditional(self, z2: Tensor) -> DiagonalGaussian:
        """p(z1|z2), batched like z2 (in float32, as every log-density here)."""
        with torch.autocast(z2.device.type, enabled=False):
            return DiagonalGaussian.from_params(self.downward(z2.float()))

    def log_prob(self, z: Tensor, fixed: bool = False) -> Tensor:
        """log p(z1|z2) + log N(z2; 0, I); [..., L1 + L2] -> [...]."""
        z1, z2 = z.float().split([self.first_dim, self.top_dim], -1)
        return self.conditional(z2).log_prob(z1) + self.top.log_prob(z2)

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral: z2 ~ N(0, I), z1 ~ p(z1|z2); [n, L1 + L2] on the prior's device."""
        device = self.downward[0].weight.device
        z2 = self.top.sample(num_samples, generator).to(device)
        p = self.conditional(z2)
        eps = torch.randn(num_samples, self.first_dim, generator=generator).to(device)
        return torch.cat([p.transform(eps), z2], -1)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Nothing to hold across importance chunks."""
        yield

    def kl(
        self, q: TwoLayerPosterior, z: Tensor | None = None, per_dim: bool = False, log_q: Tensor | None = None
    ) -> tuple[Tensor, None]:
        """The Monte-Carlo KL(q(z|x) || p(z)), the mean over the samples z of q of log q(z|x) - log p(z),
        [B] (``z`` None: ``priors.KL_SAMPLES`` fresh samples), and no per-dimension terms."""
        z, log_q = samples_of(q, z, log_q)
        return (log_q - self.log_prob(z)).mean(0), None
