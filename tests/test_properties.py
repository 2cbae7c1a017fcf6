"""Properties of the math modules over many generated inputs (hypothesis)."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vaelab.distributions import BernoulliLikelihood, DiagonalGaussian, FullCovGaussian, GaussianLikelihood
from vaelab.models import VAE
from vaelab.objectives import iwae_bound

settings.register_profile("vaelab", max_examples=60, deadline=None)
settings.load_profile("vaelab")


def tensors(shape, low, high):
    """Float tensors with entries in [low, high], extremes included."""
    n = 1
    for s in shape:
        n *= s
    return st.lists(st.floats(low, high, allow_nan=False, width=32), min_size=n, max_size=n).map(
        lambda xs: torch.tensor(xs, dtype=torch.float32).view(shape)
    )


@given(tensors((3, 4), -1e3, 1e3), tensors((3, 4), -1e4, 1e4))
def test_diagonal_kl_is_nonnegative_and_finite(mu, logvar):
    q = DiagonalGaussian(mu, logvar)
    kl = q.kl_to_standard_normal()
    assert torch.isfinite(kl).all() and (kl >= 0).all()
    assert torch.isfinite(q.rsample()).all()


@given(tensors((2, 3), -100, 100), tensors((2, 3), -20, 20), tensors((2, 3), -10, 10))
def test_full_covariance_kl_is_nonnegative(mu, logvar, offdiag):
    kl = FullCovGaussian(mu, logvar, offdiag).kl_to_standard_normal()
    assert torch.isfinite(kl).all() and (kl >= 0).all()


@given(tensors((7, 5), -1e4, 10))
def test_iwae_bound_is_at_least_the_mean_log_weight_and_at_most_the_max(log_w):
    bound = iwae_bound(log_w)
    assert (bound >= log_w.mean(0) - 1e-3 * (1 + log_w.abs().max())).all()
    assert (bound <= log_w.max(0).values + 1e-4).all()


@given(tensors((2, 1, 2, 3), -1e4, 1e4), st.integers(0, 63))
def test_bernoulli_log_likelihood_is_finite_and_nonpositive(logits, bits):
    x = torch.tensor([(bits >> i) & 1 for i in range(6)], dtype=torch.float32).view(1, 1, 2, 3).expand(2, -1, -1, -1)
    logp = BernoulliLikelihood().log_prob(x, logits)
    assert torch.isfinite(logp).all() and (logp <= 0).all()


@given(tensors((2, 1, 2, 2), -1e3, 1e3), st.floats(1e-3, 1e3))
def test_gaussian_log_likelihood_is_finite(mean, sigma):
    logp = GaussianLikelihood(sigma=sigma).log_prob(torch.rand(2, 1, 2, 2), mean)
    assert torch.isfinite(logp).all()


MODEL = VAE(
    [1, 3, 3],
    2,
    {"kind": "mlp", "hidden_dims": [8], "activation": "tanh"},
    {"name": "bernoulli"},
    {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
).eval()


@given(st.integers(1, 12), st.integers(0, 2**16))
def test_per_example_terms_do_not_depend_on_the_batch(batch_size, seed):
    """An example's KL and reconstruction at the posterior mean are the same whether it is
    evaluated alone or with others."""
    x = torch.bernoulli(torch.full((batch_size, 1, 3, 3), 0.5), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        q = MODEL.posterior(x)
        together = MODEL.likelihood.log_prob(x, MODEL.decoder(q.mu)) - q.kl_to_standard_normal()
        alone = torch.cat(
            [
                MODEL.likelihood.log_prob(xi[None], MODEL.decoder(MODEL.posterior(xi[None]).mu))
                - MODEL.posterior(xi[None]).kl_to_standard_normal()
                for xi in x
            ]
        )
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)
