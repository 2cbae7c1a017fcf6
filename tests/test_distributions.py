"""The probabilistic modules against torch.distributions, closed forms and known limits."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab.distributions import (
    BernoulliLikelihood,
    DiagonalGaussian,
    GaussianLikelihood,
    build_likelihood,
)
from vaelab.objectives import beta_vae_loss, bits_per_dim, elbo
from vaelab.priors import StandardNormalPrior

torch.manual_seed(0)


def random_posterior(batch=7, latent=5):
    return torch.randn(batch, latent), torch.randn(batch, latent)


def test_kl_matches_torch_distributions():
    mu, logvar = random_posterior()
    q = DiagonalGaussian(mu, logvar)
    reference = kl_divergence(
        Independent(Normal(mu, torch.exp(0.5 * logvar)), 1), Independent(Normal(torch.zeros_like(mu), 1.0), 1)
    )
    torch.testing.assert_close(q.kl_to_standard_normal(), reference)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere():
    q = DiagonalGaussian(torch.zeros(3, 4), torch.zeros(3, 4))
    torch.testing.assert_close(q.kl_to_standard_normal(), torch.zeros(3))
    mu, logvar = random_posterior()
    assert (DiagonalGaussian(mu, logvar).kl_to_standard_normal() > 0).all()


def test_kl_per_dim_sums_to_kl():
    q = DiagonalGaussian(*random_posterior())
    torch.testing.assert_close(q.kl_to_standard_normal_per_dim().sum(-1), q.kl_to_standard_normal())


def test_posterior_log_prob_matches_torch_distributions():
    mu, logvar = random_posterior()
    q = DiagonalGaussian(mu, logvar)
    z = q.rsample(num_samples=3)  # [S, B, L]
    reference = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z)
    torch.testing.assert_close(q.log_prob(z), reference)


def test_reparameterized_samples_have_the_posterior_moments():
    mu = torch.tensor([[1.5, -2.0]])
    logvar = torch.tensor([[math.log(0.25), math.log(4.0)]])
    z = DiagonalGaussian(mu, logvar).rsample(num_samples=200_000)
    torch.testing.assert_close(z.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.var(0), logvar.exp(), atol=0.03, rtol=0.02)


def test_gradients_reach_mu_and_logvar_through_the_sample():
    mu = torch.randn(4, 3, requires_grad=True)
    logvar = torch.randn(4, 3, requires_grad=True)
    z = DiagonalGaussian(mu, logvar).rsample()
    (z**2).sum().backward()
    assert mu.grad.abs().min() > 0 and logvar.grad.abs().min() > 0


def test_extreme_logvar_stays_finite():
    q = DiagonalGaussian(torch.zeros(2, 3), torch.tensor([[1e4, -1e4, 0.0]] * 2))
    assert torch.isfinite(q.kl_to_standard_normal()).all()
    assert torch.isfinite(q.rsample()).all()
    q16 = DiagonalGaussian(torch.zeros(2, 3, dtype=torch.bfloat16), torch.full((2, 3), 200.0, dtype=torch.bfloat16))
    assert q16.logvar.dtype == torch.float32 and torch.isfinite(q16.kl_to_standard_normal()).all()


def test_prior_log_prob_matches_torch_distributions():
    z = torch.randn(6, 4)
    reference = Independent(Normal(torch.zeros(4), 1.0), 1).log_prob(z)
    torch.testing.assert_close(StandardNormalPrior(4).log_prob(z), reference)


def test_bernoulli_likelihood_matches_torch_distributions():
    logits = torch.randn(5, 1, 4, 4) * 3
    x = torch.bernoulli(torch.full((5, 1, 4, 4), 0.3))
    reference = Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(BernoulliLikelihood().log_prob(x, logits), reference)


def test_bernoulli_likelihood_is_finite_for_saturated_logits():
    logits = torch.tensor([200.0, -200.0]).view(1, 1, 1, 2)
    x = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)  # the worst possible prediction
    logp = BernoulliLikelihood().log_prob(x, logits)
    torch.testing.assert_close(logp, torch.tensor([-400.0]))


def test_bernoulli_broadcasts_over_samples():
    logits = torch.randn(3, 2, 1, 4, 4)  # [S, B, C, H, W]
    x = torch.bernoulli(torch.full((2, 1, 4, 4), 0.5))
    logp = BernoulliLikelihood().log_prob(x, logits)
    assert logp.shape == (3, 2)
    torch.testing.assert_close(logp[1], BernoulliLikelihood().log_prob(x, logits[1]))


@pytest.mark.parametrize("learn_sigma", ["none", "global", "pixel"])
def test_gaussian_likelihood_matches_torch_distributions(learn_sigma):
    lik = GaussianLikelihood(sigma=0.3, learn_sigma=learn_sigma, image_shape=(1, 4, 4))
    mean = torch.rand(5, 1, 4, 4)
    x = torch.rand(5, 1, 4, 4)
    reference = Normal(mean, 0.3).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(lik.log_prob(x, mean), reference)


def test_learned_sigma_gets_gradients_and_has_the_right_shape():
    glob = GaussianLikelihood(0.5, "global")
    pixel = GaussianLikelihood(0.5, "pixel", image_shape=(3, 2, 2))
    assert glob.log_sigma.shape == () and pixel.log_sigma.shape == (3, 2, 2)
    x = torch.rand(4, 3, 2, 2)
    for lik in (glob, pixel):
        lik.log_prob(x, torch.zeros_like(x)).sum().backward()
        assert lik.log_sigma.grad.abs().min() > 0
    assert list(GaussianLikelihood(0.5, "none").parameters()) == []


def test_learned_sigma_gradient_and_optimum():
    # d log N(x; 0, sigma^2) / d log sigma = -1 + x^2 / sigma^2, zero where sigma = RMS(x).
    x = torch.randn(1000, 1, 1, 1) * 0.5
    lik = GaussianLikelihood(sigma=0.2, learn_sigma="global")
    lik.log_prob(x, torch.zeros_like(x)).sum().backward()
    torch.testing.assert_close(lik.log_sigma.grad, (-1 + x.pow(2) / 0.04).sum())
    at_optimum = GaussianLikelihood(sigma=x.pow(2).mean().sqrt().item(), learn_sigma="global")
    at_optimum.log_prob(x, torch.zeros_like(x)).sum().backward()
    assert abs(at_optimum.log_sigma.grad.item()) < 1e-2


def test_unknown_likelihood_is_rejected():
    with pytest.raises(ValueError, match="bernoulli or gaussian"):
        build_likelihood("poisson", (1, 2, 2))


def test_elbo_and_loss():
    log_px = torch.tensor([-10.0, -20.0])
    kl = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(elbo(log_px, kl), torch.tensor([-11.0, -23.0]))
    torch.testing.assert_close(beta_vae_loss(log_px, kl, beta=1.0), torch.tensor(17.0))
    torch.testing.assert_close(beta_vae_loss(log_px, kl, beta=4.0), torch.tensor(15.0 + 8.0))


def test_bits_per_dim():
    nats = torch.tensor(784 * math.log(2))  # exactly one bit per pixel
    torch.testing.assert_close(bits_per_dim(nats, 784), torch.tensor(1.0))
    # A uniform density on [0, 1] is 8 bits/dim on the 256-level grid.
    torch.testing.assert_close(bits_per_dim(torch.tensor(0.0), 10, math.log(256)), torch.tensor(8.0))
