"""Gaussian posteriors and likelihoods: the probabilistic pieces of a VAE (priors: ``priors``;
flow posteriors: ``flows``).

Shapes: ``B`` batch, ``L`` latent size, ``S`` number of samples, ``C, H, W`` image.
Every log-density is summed over its event dimensions and returned per example, in nats,
and is computed in float32 even when the networks run in reduced precision.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.checks import and_list, require
from vaelab.settings import Settings, not_an_option_setting, setting, validate

if TYPE_CHECKING:
    from collections.abc import Sequence

LOG_2PI = math.log(2 * math.pi)

# exp(LOGVAR_LIMIT) must stay finite in bf16/fp16 and well inside float32; ±30 covers
# standard deviations from 3e-7 to 3e6, wider than any trained posterior needs.
LOGVAR_LIMIT = 30.0


class DiagonalGaussian:
    """q(z|x) = N(z; mu, diag(exp(logvar))), the AEVB posterior.

    ``mu`` and ``logvar`` are [B, L]. Sampling uses the reparameterization
    z = mu + exp(logvar / 2) * eps, eps ~ N(0, I), so gradients reach the encoder.
    """

    kl_is_sum_per_dim = True  # independent latents: the joint KL is the sum over dimensions
    gaussian = True  # its density is known everywhere, its KL to N(0, I) in closed form (a flow's is not)

    def __init__(self, mu: Tensor, logvar: Tensor):
        self.mu = mu.float()
        # Exact inside the limits (so q is what the encoder says); a guard against overflow outside.
        self.logvar = logvar.float().clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)

    @staticmethod
    def num_params(latent_dim: int) -> int:
        return 2 * latent_dim

    @classmethod
    def from_params(cls, params: Tensor) -> DiagonalGaussian:
        """From the encoder's [B, 2L] output: (mu, logvar)."""
        mu, logvar = params.chunk(2, dim=-1)
        return cls(mu, logvar)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def detached(self) -> DiagonalGaussian:
        """The same distribution with no gradient path to its parameters (for DReG and the
        score-function estimator, which treat log q's parameters separately from the sample)."""
        return DiagonalGaussian(self.mu.detach(), self.logvar.detach())

    def rsample(self, num_samples: int | None = None) -> Tensor:
        """[B, L] reparameterized sample, or [S, B, L] when ``num_samples`` is given."""
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        return self.transform(torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype))

    def transform(self, eps: Tensor) -> Tensor:
        """z = mu + sigma * eps for standard-normal noise eps [..., B, L]."""
        return self.mu + self.std * eps

    def rsample_with_log_prob(self, num_samples: int | None = None) -> tuple[Tensor, Tensor]:
        """A reparameterized sample and log q at it (the contract a flow posterior shares)."""
        z = self.rsample(num_samples)
        return z, self.log_prob(z)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x) summed over L; ``z`` is [..., B, L], result [..., B]."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 / self.logvar.exp()).sum(-1)

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        """log N(z_d; mu_d, sigma_d^2) of each dimension, [..., B, L]."""
        return -0.5 * (LOG_2PI + self.logvar + (z - self.mu) ** 2 / self.logvar.exp())

    def kl_to_standard_normal_per_dim(self) -> Tensor:
        """KL(q || N(0, I)) per latent dimension, [B, L]:
        0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)  (AEVB paper, Appendix B), with
        sigma^2 - 1 as expm1(log sigma^2) so that rounding never makes it negative."""
        return 0.5 * (self.mu**2 + torch.expm1(self.logvar) - self.logvar)

    def kl_to_standard_normal(self) -> Tensor:
        """Closed-form KL(q || N(0, I)) summed over latents, [B]."""
        return self.kl_to_standard_normal_per_dim().sum(-1)

    def covariance(self) -> Tensor:
        """Sigma(x) = diag(sigma^2), [B, L, L]."""
        return torch.diag_embed(self.logvar.exp())


class FullCovGaussian:
    """q(z|x) = N(z; mu, S S^T) with S lower triangular, positive diagonal exp(logvar / 2):
    a full-covariance posterior through its Cholesky factor.

    ``mu``, ``logvar`` [B, L]; ``offdiag`` [B, L(L-1)/2] fills S below the diagonal.
    Reparameterization: z = mu + S eps.
    """

    kl_is_sum_per_dim = False  # correlated latents: the joint KL adds the total correlation
    gaussian = True

    def __init__(self, mu: Tensor, logvar: Tensor, offdiag: Tensor):
        self.mu = mu.float()
        self.logvar = logvar.float().clamp(-LOGVAR_LIMIT, LOGVAR_LIMIT)
        batch, latent = self.mu.shape
        rows, cols = torch.tril_indices(latent, latent, offset=-1, device=self.mu.device)
        scale = torch.diag_embed(torch.exp(0.5 * self.logvar))
        self.offdiag = offdiag.float()
        self.scale_tril = scale.index_put(
            (torch.arange(batch, device=self.mu.device)[:, None], rows, cols), self.offdiag
        )

    @staticmethod
    def num_params(latent_dim: int) -> int:
        return 2 * latent_dim + latent_dim * (latent_dim - 1) // 2

    @classmethod
    def from_params(cls, params: Tensor) -> FullCovGaussian:
        latent = _solve_latent_dim(params.shape[-1])
        mu, logvar, offdiag = params.split([latent, latent, params.shape[-1] - 2 * latent], dim=-1)
        return cls(mu, logvar, offdiag)

    @property
    def std(self) -> Tensor:
        """The marginal standard deviations [..., L]: sqrt of diag(S S^T), the rows' norms of S."""
        return self.scale_tril.norm(dim=-1)

    def detached(self) -> FullCovGaussian:
        copy = object.__new__(FullCovGaussian)
        copy.mu, copy.logvar, copy.scale_tril = self.mu.detach(), self.logvar.detach(), self.scale_tril.detach()
        copy.offdiag = self.offdiag.detach()
        return copy

    def rsample(self, num_samples: int | None = None) -> Tensor:
        shape = self.mu.shape if num_samples is None else (num_samples, *self.mu.shape)
        return self.transform(torch.randn(shape, device=self.mu.device, dtype=self.mu.dtype))

    def transform(self, eps: Tensor) -> Tensor:
        """z = mu + S eps for standard-normal noise eps [..., B, L]."""
        return self.mu + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def rsample_with_log_prob(self, num_samples: int | None = None) -> tuple[Tensor, Tensor]:
        z = self.rsample(num_samples)
        return z, self.log_prob(z)

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        """log N(z_d; mu_d, Sigma_dd) of each dimension's marginal, [..., B, L]."""
        var = self.scale_tril.pow(2).sum(-1)
        return -0.5 * (LOG_2PI + var.log() + (z - self.mu) ** 2 / var)

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z|x): -0.5 * (L log 2pi + log det(S S^T) + |S^-1 (z - mu)|^2); [..., B, L] -> [..., B]."""
        diff = (z - self.mu).unsqueeze(-1)
        solved = torch.linalg.solve_triangular(self.scale_tril.expand(*diff.shape[:-2], -1, -1), diff, upper=False)
        mahalanobis = solved.squeeze(-1).pow(2).sum(-1)
        return -0.5 * (self.mu.shape[-1] * LOG_2PI + self.logvar.sum(-1) + mahalanobis)

    def kl_to_standard_normal_per_dim(self) -> Tensor:
        """KL of each latent's marginal N(mu_d, Sigma_dd) to N(0, 1), [B, L]; these do not sum to
        the joint KL when latents are correlated (the joint adds the total correlation)."""
        var = self.scale_tril.pow(2).sum(-1)
        return 0.5 * (self.mu**2 + var - 1.0 - var.log())

    def covariance(self) -> Tensor:
        """Sigma(x) = S S^T, [B, L, L]."""
        return self.scale_tril @ self.scale_tril.transpose(-1, -2)

    def kl_to_standard_normal(self) -> Tensor:
        """Closed-form KL(N(mu, Sigma) || N(0, I)) = 0.5 * (tr Sigma + mu^T mu - L - log det Sigma), [B].
        With Sigma = S S^T: tr Sigma = sum_d sigma_d^2 + sum of squared off-diagonal entries and
        log det Sigma = sum_d log sigma_d^2, written as sums of non-negative terms."""
        diagonal = (torch.expm1(self.logvar) - self.logvar).sum(-1)
        return 0.5 * (self.mu.pow(2).sum(-1) + diagonal + self.offdiag.pow(2).sum(-1))


def _solve_latent_dim(num_params: int) -> int:
    """L with 2L + L(L-1)/2 = num_params."""
    latent = int((-3 + math.sqrt(9 + 8 * num_params)) / 2)
    assert FullCovGaussian.num_params(latent) == num_params, num_params
    return latent


POSTERIORS = {"diagonal": DiagonalGaussian, "full": FullCovGaussian}


class Likelihood(nn.Module):
    """p(x|z) given the decoder's output ``params`` ([..., C, H, W]) for data ``x`` [B, C, H, W]."""

    # Added to nats/dim before converting to bits/dim (see objectives.bits_per_dim).
    bpd_offset_nats_per_dim = 0.0

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) summed over pixels, [...] (one value per example and sample)."""
        raise NotImplementedError

    def forward(self, x: Tensor, params: Tensor) -> Tensor:
        """``log_prob``; as ``forward`` so that ``torch.func.functional_call`` can evaluate it with
        other (e.g. detached) parameters, as DReG's encoder term does."""
        return self.log_prob(x, params)

    def mean(self, params: Tensor) -> Tensor:
        """E[x|z], the image to show for a reconstruction or a sample."""
        raise NotImplementedError


class BernoulliLikelihood(Likelihood):
    """p(x|z) = prod_i Bernoulli(x_i; sigmoid(logit_i)), computed on logits for stability."""

    class Settings(Settings):
        name: Literal["bernoulli"] = setting("bernoulli", "the likelihood")

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
    A density of uniformly dequantized data y = (x + u) / num_levels (``vaelab.data.in_memory``):
    -log P(x) <= -E_u[log p(y)] + D log(num_levels), so bits/dim add log(num_levels) per dimension.
    ``num_levels`` None: continuous data (``data=tensors`` of floats), a density with no offset.
    """

    class Settings(Settings):
        name: Literal["gaussian"] = setting("gaussian", "the likelihood")
        sigma: float = setting(0.1, "the standard deviation (the initial one if learned)", gt=0)
        learn_sigma: Literal["none", "global", "pixel"] = setting(
            "none", "fixed sigma, one learned sigma, or one per pixel"
        )
        num_levels: int | None = setting(
            256, "the data's values per pixel: dequantization bins, bits/dim offset; null: continuous data", ge=2
        )

    def __init__(
        self,
        sigma: float = Settings.default("sigma"),
        learn_sigma: str = Settings.default("learn_sigma"),
        image_shape: Sequence[int] | None = None,
        num_levels: int | None = Settings.default("num_levels"),
    ):
        super().__init__()
        self.bpd_offset_nats_per_dim = math.log(num_levels) if num_levels is not None else 0.0
        log_sigma = torch.tensor(math.log(sigma))
        if learn_sigma == "none":
            self.register_buffer("log_sigma", log_sigma)
        elif learn_sigma == "global":
            self.log_sigma = nn.Parameter(log_sigma)
        else:  # "pixel": the schema admits no other value
            self.log_sigma = nn.Parameter(log_sigma.expand(*image_shape).clone())

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mu = params.float()
        # Bounded below so a learned sigma cannot shrink to 0 and send the likelihood to infinity.
        log_sigma = self.log_sigma.float().clamp(min=-7.0)
        logp = -0.5 * (LOG_2PI + 2 * log_sigma + ((x.float() - mu) / log_sigma.exp()) ** 2)
        return logp.flatten(-3).sum(-1)

    def mean(self, params: Tensor) -> Tensor:
        return params.float()


LIKELIHOODS: dict[str, type[Likelihood]] = {"bernoulli": BernoulliLikelihood, "gaussian": GaussianLikelihood}


def build_likelihood(name: str, image_shape: Sequence[int] | None, **settings: Any) -> Likelihood:
    """The likelihood ``name`` with its settings (``num_levels``, ``sigma``, ...)."""
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}: use {' or '.join(LIKELIHOODS)}")
    if name == "gaussian":
        settings["image_shape"] = image_shape
    return LIKELIHOODS[name](**settings)


def check_likelihood(lik: Any, data_levels: int | None = None) -> Settings:
    """The ``likelihood`` node against the schema of its ``name``, and its levels against the data's."""
    name = lik.get("name")
    require(
        name in LIKELIHOODS,
        f"likelihood.name must be {and_list(list(LIKELIHOODS), 'or')}, got {name!r}; "
        "choose likelihood=bernoulli|gaussian|gaussian_learned",
    )
    schema = LIKELIHOODS[name].Settings
    takes = [key for key in schema.model_fields if key != "name"]

    def unknown(key: str) -> str:
        other = next((o for o, cls in LIKELIHOODS.items() if key in cls.Settings.model_fields), None)
        if other:
            return (
                f"likelihood.{key} has no effect with likelihood={name}: it is a setting of likelihood={other}; "
                f"drop likelihood.{key} or choose likelihood={other}"
            )
        return not_an_option_setting(f"likelihood.{key}", f"likelihood={name}", takes)

    if name == "gaussian" and "num_levels" in lik and data_levels is not None:
        require(
            lik.num_levels == data_levels,
            f"likelihood.num_levels={lik.num_levels} but data.num_levels={data_levels}: "
            "the bits/dim offset must be the data's; drop likelihood.num_levels (it follows data.num_levels)",
        )
    return validate(schema, lik, "likelihood", unknown)
