"""IWAE, DReG, the score-function estimator, full-covariance posteriors, KL and LR schedules."""

import itertools
import math

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from vaelab.diagnostics import encoder_gradient_samples, gradient_variance
from vaelab.distributions import DiagonalGaussian, FullCovGaussian
from vaelab.loop import WeightedSums
from vaelab.models import IWAE, VAE, BetaTCVAE, BetaVAE
from vaelab.objectives import iwae_bound
from vaelab.schedules import (
    CapacityControl,
    ConstantBeta,
    CyclicalAnnealing,
    IWAEPaperLR,
    LinearWarmup,
    build_kl_schedule,
)

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
MLP = {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}
S = 0.5  # decoder noise of the linear-Gaussian model


def linear_gaussian(cls=VAE, latent=2, **kwargs):
    """p(z) = N(0, I), p(x|z) = N(x; z, S^2 I): then log p(x) = log N(x; 0, (1 + S^2) I) exactly.
    The encoder is a linear map (its weights are the variational parameters)."""
    model = cls([1, 1, latent], latent, MLP, {"name": "gaussian", "sigma": S, "learn_sigma": "none"}, ADAM, **kwargs)
    model.encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(latent, 2 * latent))
    model.decoder = torch.nn.Unflatten(-1, (1, 1, latent))
    return model


def exact_log_px(x):
    return torch.distributions.Normal(0, math.sqrt(1 + S**2)).log_prob(x).flatten(1).sum(-1)


def bernoulli_model(cls, **kwargs):
    torch.manual_seed(0)
    return cls([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, **kwargs)


# ---- IWAE ------------------------------------------------------------------------------
def test_iwae_bound_is_at_least_the_elbo_on_the_same_samples():
    model = bernoulli_model(VAE)
    x = torch.bernoulli(torch.full((32, 1, 4, 4), 0.4))
    log_w = model.log_weights(x, 20)  # [k, B]
    assert (iwae_bound(log_w) >= log_w.mean(0) - 1e-5).all()


def analytic_elbo(model, x):
    """E_q[log p(x|z)] - KL in closed form for the linear-Gaussian model."""
    q = model.posterior(x)
    dims = x[0].numel()
    expected_rec = -0.5 * dims * math.log(2 * math.pi * S**2) - ((x.flatten(1) - q.mu) ** 2 + q.logvar.exp()).sum(
        -1
    ) / (2 * S**2)
    return expected_rec - q.kl_to_standard_normal()


def test_k1_bound_is_the_single_sample_elbo_and_averages_to_the_analytic_elbo():
    torch.manual_seed(0)
    model = linear_gaussian()
    x = torch.randn(200, 1, 1, 2)
    log_w = model.log_weights(x, 1)
    torch.testing.assert_close(iwae_bound(log_w), log_w[0])
    many = model.log_weights(x, 2000).detach()  # [k, B], each a k = 1 bound
    stderr = many.std() / math.sqrt(many.numel())
    assert abs(many.mean() - analytic_elbo(model, x).mean()) < 4 * stderr


def test_bound_increases_with_k_and_approaches_log_px():
    torch.manual_seed(0)
    model = linear_gaussian()  # an untrained encoder: far from the true posterior
    x = torch.randn(500, 1, 1, 2)
    exact = exact_log_px(x).mean()
    gaps = [exact - model.iwae_bound(x, k, chunk=64).mean() for k in (1, 10, 100, 1000)]
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[0] > 1.0 and gaps[-1] < 0.25 * gaps[0] and gaps[-1] > -0.02


def test_iwae_gradient_is_the_gradient_of_the_bound_with_normalised_weights():
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.4))
    model = bernoulli_model(IWAE, k=7).train()
    torch.manual_seed(1)
    model.objective(x)["loss"].backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    # By hand: d/dtheta logsumexp_k log w_k = sum_k softmax(log w)_k d log w_k / dtheta.
    torch.manual_seed(1)
    q = model.posterior(x)
    z = q.rsample(7)
    log_w = model.likelihood.log_prob(x, model.decoder(z)) + model.prior.log_prob(z) - q.log_prob(z)
    weights = torch.softmax(log_w, 0).detach()
    torch.testing.assert_close(weights.sum(0), torch.ones(8))
    (-(weights * log_w).sum(0).mean()).backward()
    for a, p in zip(ours, model.parameters()):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


def test_dreg_matches_iwae_for_the_decoder_and_in_expectation_for_the_encoder():
    x = torch.bernoulli(torch.full((16, 1, 4, 4), 0.4))
    iwae = bernoulli_model(IWAE, k=20)
    dreg = bernoulli_model(IWAE, k=20, dreg=True)
    dreg.load_state_dict(iwae.state_dict())
    for model in (iwae, dreg):
        model.train()
    # Same samples: identical loss value and decoder gradient.
    grads = []
    for model in (iwae, dreg):
        torch.manual_seed(3)
        loss = model.objective(x)["loss"]
        model.zero_grad()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.decoder.parameters()]))
    assert grads[0][0] == pytest.approx(grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # Encoder: both unbiased for the same gradient; DReG with less variance.
    torch.manual_seed(4)
    g_iwae = encoder_gradient_samples(iwae, x, 400)
    g_dreg = encoder_gradient_samples(dreg, x, 400)
    diff = (g_iwae.mean(0) - g_dreg.mean(0)).abs()
    stderr = ((g_iwae.var(0) + g_dreg.var(0)) / 400).sqrt()
    assert (diff < 5 * stderr + 1e-6).float().mean() > 0.97
    assert g_dreg.var(0).mean() < g_iwae.var(0).mean()


@pytest.mark.parametrize("learn_sigma", ["global", "pixel"])
def test_dreg_gives_the_generative_side_exactly_the_iwae_gradient_with_a_learned_sigma(learn_sigma):
    """The decoder and a learned likelihood scale are the generative model: DReG changes only the
    encoder's gradient, so on the same samples they get exactly IWAE's gradient."""
    likelihood = {"name": "gaussian", "sigma": 0.3, "learn_sigma": learn_sigma}
    torch.manual_seed(0)
    iwae = IWAE([1, 4, 4], 3, MLP, likelihood, ADAM, k=10)
    dreg = IWAE([1, 4, 4], 3, MLP, likelihood, ADAM, k=10, dreg=True)
    dreg.load_state_dict(iwae.state_dict())
    x = torch.rand(16, 1, 4, 4)
    grads = []
    for model in (iwae, dreg):
        model.train()
        torch.manual_seed(3)
        loss = model.objective(x)["loss"]
        model.zero_grad()
        loss.backward()
        grads.append([p.grad.clone() for p in (*model.decoder.parameters(), model.likelihood.log_sigma)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ---- score function --------------------------------------------------------------------
def test_score_function_and_reparameterization_agree_in_expectation_with_the_exact_gradient():
    """On the linear-Gaussian model the ELBO is analytic in the encoder's weights:
    E_q[log p(x|z)] = const - (|x - m|^2 + sum v) / (2 S^2), so its gradient is exact."""
    torch.manual_seed(0)
    x = torch.randn(8, 1, 1, 2)
    reparam = linear_gaussian()
    score = linear_gaussian(estimator="score_function", baseline_decay=0.9)
    score.load_state_dict(reparam.state_dict())
    exact_loss = -analytic_elbo(reparam, x).mean()
    exact = torch.autograd.grad(exact_loss, list(reparam.encoder.parameters()))
    exact = torch.cat([g.flatten() for g in exact])
    with torch.no_grad():
        q = reparam.posterior(x)
        score.baseline.fill_((analytic_elbo(reparam, x) + q.kl_to_standard_normal()).mean().item())
    draws = 20_000
    g_rep = encoder_gradient_samples(reparam, x, 2_000)
    g_sf = encoder_gradient_samples(score, x, draws)
    torch.testing.assert_close(g_rep.mean(0), exact, atol=0.05, rtol=0.05)
    sf_stderr = g_sf.std(0) / math.sqrt(draws)
    assert ((g_sf.mean(0) - exact).abs() < 5 * sf_stderr + 1e-3).all()
    assert g_sf.var(0).mean() > 10 * g_rep.var(0).mean()


def test_score_function_loss_value_is_the_true_objective():
    x = torch.bernoulli(torch.full((64, 1, 4, 4), 0.4))
    model = bernoulli_model(VAE, estimator="score_function").train()
    torch.manual_seed(0)
    out = model.objective(x)
    torch.testing.assert_close(out["loss"], -(out["log_px_given_z"] - out["kl"]).mean())
    assert model.baseline.item() != 0  # the moving average moved


def test_gradient_variance_summary():
    draws = torch.tensor([[1.0, 2.0], [3.0, 2.0]])
    stats = gradient_variance(draws)
    assert stats["grad_variance"] == pytest.approx(1.0)  # variances 2 and 0
    assert stats["grad_mean_sq"] == pytest.approx((4 + 4) / 2)


@pytest.mark.parametrize("likelihood,binary", [("bernoulli", True), ("gaussian", False)])
def test_encoder_gradient_variance_uses_the_data_as_the_model_trains_on_it(likelihood, binary, monkeypatch):
    """Digits have grey levels: a Bernoulli model trains on binarized draws of them, so its
    gradient variance is measured on a binarized batch (the same draw every epoch); a Gaussian
    model trains on the grey levels themselves."""
    from types import SimpleNamespace

    import vaelab.diagnostics
    from vaelab.callbacks import EncoderGradientVariance
    from vaelab.data import DigitsDataModule

    data = DigitsDataModule(image_shape=[1, 8, 8], likelihood=likelihood)
    data.prepare()
    assert data.binarize == binary
    seen = []
    monkeypatch.setattr(
        vaelab.diagnostics,
        "encoder_gradient_samples",
        lambda model, x, num_draws: seen.append(x) or torch.randn(num_draws, 3),
    )
    module = SimpleNamespace(device=torch.device("cpu"), log_dict=lambda *args, **kwargs: None)
    callback = EncoderGradientVariance(num_draws=2, batch_size=50)
    for epoch in (0, 1):
        callback.on_train_epoch_end(SimpleNamespace(current_epoch=epoch, datamodule=data), module)
    first, second = seen
    assert first.shape == (50, 1, 8, 8)
    is_binary = bool(((first == 0) | (first == 1)).all())
    assert is_binary == binary
    torch.testing.assert_close(first, second)  # a fixed batch: epochs are comparable


# ---- full covariance -------------------------------------------------------------------
def random_full_cov(batch=5, latent=4):
    torch.manual_seed(0)
    return FullCovGaussian(
        torch.randn(batch, latent), torch.randn(batch, latent), torch.randn(batch, latent * (latent - 1) // 2)
    )


def test_full_cov_kl_and_log_prob_match_torch_distributions():
    q = random_full_cov()
    reference = MultivariateNormal(q.mu, scale_tril=q.scale_tril)
    standard = MultivariateNormal(torch.zeros(4), torch.eye(4))
    torch.testing.assert_close(q.kl_to_standard_normal(), kl_divergence(reference, standard))
    z = q.rsample(num_samples=3)
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z))


def test_full_cov_with_a_diagonal_factor_is_the_diagonal_gaussian():
    mu, logvar = torch.randn(6, 3), torch.randn(6, 3)
    full = FullCovGaussian(mu, logvar, torch.zeros(6, 3))
    diag = DiagonalGaussian(mu, logvar)
    torch.testing.assert_close(full.kl_to_standard_normal(), diag.kl_to_standard_normal())
    z = diag.rsample(2)
    torch.testing.assert_close(full.log_prob(z), diag.log_prob(z))


def test_full_cov_samples_have_the_covariance():
    q = random_full_cov(batch=1, latent=3)
    z = q.rsample(num_samples=200_000)[:, 0]
    cov = torch.cov(z.T)
    expected = q.scale_tril[0] @ q.scale_tril[0].T
    torch.testing.assert_close(cov, expected, atol=0.05 * expected.abs().max().item(), rtol=0)


def test_full_cov_model_trains_and_its_params_round_trip():
    model = bernoulli_model(VAE, posterior="full")
    assert model.encoder(torch.rand(2, 1, 4, 4)).shape == (2, FullCovGaussian.num_params(3))
    q = model.posterior(torch.rand(2, 1, 4, 4))
    assert q.scale_tril.shape == (2, 3, 3) and torch.equal(q.scale_tril.triu(1), torch.zeros(2, 3, 3))
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.4))
    model.objective(x)["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


# ---- beta-VAE and schedules ---------------------------------------------------------------
def test_schedules_match_their_formulas():
    assert ConstantBeta(4.0)(123) == (4.0, None)
    warm = LinearWarmup(beta=2.0, warmup_steps=100)
    assert [warm(t)[0] for t in (0, 50, 100, 1000)] == [0.0, 1.0, 2.0, 2.0]
    cyc = CyclicalAnnealing(beta=1.0, total_steps=400, cycles=4, ratio=0.5)
    # Cycles of 100 steps: rising over 50, flat for 50, back to 0 at each new cycle.
    assert [cyc(t)[0] for t in (0, 25, 50, 99, 100, 125, 399)] == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5, 1.0]
    cap = CapacityControl(gamma=1000.0, c_max=25.0, steps=100)
    assert [cap(t) for t in (0, 40, 100, 500)] == [(1000.0, 0.0), (1000.0, 10.0), (1000.0, 25.0), (1000.0, 25.0)]


def test_epoch_lengths_become_steps():
    schedule = build_kl_schedule(
        {"name": "linear", "warmup_steps": None, "warmup_epochs": 2}, beta=1.0, steps_per_epoch=30
    )
    assert schedule.warmup_steps == 60
    schedule = build_kl_schedule(
        {"name": "capacity", "gamma": 10.0, "c_max": 5.0, "steps": None, "epochs": 3}, beta=1.0, steps_per_epoch=10
    )
    assert schedule.steps == 30 and schedule.gamma == 10.0


def test_iwae_paper_learning_rate_schedule():
    lr = IWAEPaperLR(stages=8)
    assert lr.total_epochs == 3280
    assert lr(0) == 1.0
    assert [lr(e) for e in (1, 3)] == [10 ** (-1 / 7)] * 2
    assert [lr(e) for e in (4, 12)] == [10 ** (-2 / 7)] * 2
    assert lr(3279) == pytest.approx(0.1)
    assert IWAEPaperLR(stages=4).total_epochs == 40


def test_beta_vae_loss_with_schedule_capacity_and_free_bits():
    x = torch.bernoulli(torch.full((16, 1, 4, 4), 0.4))
    model = bernoulli_model(BetaVAE, beta=4.0, kl_schedule={"name": "constant"})
    torch.manual_seed(0)
    out = model.objective(x)
    torch.testing.assert_close(out["loss"], (-out["log_px_given_z"] + 4.0 * out["kl"]).mean())
    capacity = bernoulli_model(BetaVAE, kl_schedule={"name": "capacity", "gamma": 100.0, "c_max": 5.0, "steps": 1})
    torch.manual_seed(0)
    out = capacity.objective(x)  # at step 0, C = 0
    torch.testing.assert_close(out["loss"], -out["log_px_given_z"].mean() + 100.0 * out["kl"].mean())
    free = bernoulli_model(BetaVAE, beta=1.0, free_bits=10.0)  # far above any dimension's KL here
    torch.manual_seed(0)
    out = free.objective(x)
    # Every dimension's KL is below 10 nats, so each counts as 10: a constant, no gradient.
    assert (out["kl_per_dim"].mean(0) < 10.0).all()
    torch.testing.assert_close(out["loss"], -out["log_px_given_z"].mean() + 3 * 10.0)
    assert out["beta"].item() == 1.0


# ---- where step metrics live ----------------------------------------------------------------
@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (VAE, {}),
        (BetaVAE, {"kl_schedule": {"name": "linear", "warmup_steps": 10}}),
        (BetaVAE, {"kl_schedule": {"name": "capacity", "gamma": 10.0, "c_max": 5.0, "steps": 10}}),
        (IWAE, {"k": 3}),
        (BetaTCVAE, {"dataset_size": 100}),
        (BetaTCVAE, {"dataset_size": 100, "sampling": "mss"}),
    ],
)
def test_every_step_metric_lives_on_the_loss_device(cls, kwargs):
    """A metric made on the CPU beside a GPU loss fails when the metrics are stacked. The suite has
    no GPU, so the model runs on PyTorch's meta device, which is not the CPU either: anything created
    without the loss's device shows up here as it would on a GPU."""
    model = bernoulli_model(cls, **kwargs).to("meta")
    x = torch.empty(4, 1, 4, 4, device="meta")
    loss, metrics = model.step_metrics(x)
    for name, value in model.with_derived(metrics).items():
        assert value.device == loss.device, name
        assert value.dtype == torch.float32, name
    sums = WeightedSums()
    sums.add(metrics, batch_size=4)  # stacks every metric: fails across devices
