"""β-TCVAE: the minibatch estimators of log q(z) against a double loop and their formulas, the KL's
decomposition against closed forms, the loss at unit weights, and what a training run logs."""

import csv
import math

import pytest
import torch
from torch.distributions import Normal

from conftest import run_cli
from vaelab.errors import UserError
from vaelab.models import VAE, BetaTCVAE
from vaelab.objectives import (
    aggregate_posterior_log_densities,
    kl_decomposition,
    log_density_matrix,
    mss_log_weights,
)

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
MLP = {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}


def bernoulli_model(cls, **kwargs):
    torch.manual_seed(0)
    return cls([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, **kwargs)


def random_posteriors(batch, latent, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(batch, latent, generator=g)
    logvar = torch.randn(batch, latent, generator=g) * 0.5
    z = mu + (0.5 * logvar).exp() * torch.randn(batch, latent, generator=g)
    return z, mu, logvar


# ---- the estimators, by brute force ------------------------------------------------------
def mss_weight(i: int, j: int, batch: int, n: int) -> float:
    """Chen et al. 2018, appendix C.2, with M = B - 1 others: 1/N for the sample's own posterior,
    (N - M)/(N M) for one other (here the next one), 1/M for the rest."""
    m = batch - 1
    if j == i:
        return 1 / n
    if j == (i + 1) % batch:
        return (n - m) / (n * m)
    return 1 / m


def brute_force(z, mu, logvar, n, sampling):
    """log q(z_i) and sum_d log q(z_id) by explicit loops over i, j (and d), in float64."""
    z, mu, std = z.double(), mu.double(), (0.5 * logvar.double()).exp()
    batch, latent = z.shape
    log_qz, log_prod = [], []
    for i in range(batch):
        joint, marginals = 0.0, [0.0] * latent
        for j in range(batch):
            w = 1 / (n * batch) if sampling == "mws" else mss_weight(i, j, batch, n)
            per_dim = Normal(mu[j], std[j]).log_prob(z[i])  # [L]
            joint += w * math.exp(per_dim.sum())
            for d in range(latent):
                marginals[d] += w * math.exp(per_dim[d])
        log_qz.append(math.log(joint))
        log_prod.append(sum(math.log(m) for m in marginals))
    return torch.tensor(log_qz, dtype=torch.float64), torch.tensor(log_prod, dtype=torch.float64)


@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_the_vectorised_estimates_match_a_double_loop(sampling):
    z, mu, logvar = random_posteriors(batch=6, latent=3)
    n = 40
    log_q = log_density_matrix(z, mu, logvar)
    assert log_q.shape == (6, 6, 3)
    torch.testing.assert_close(  # entry (i, j, d) is log q(z_id | x_j)
        log_q[2, 4], Normal(mu[4], (0.5 * logvar[4]).exp()).log_prob(z[2])
    )
    log_qz, log_prod = aggregate_posterior_log_densities(log_q, n, sampling)
    expected_qz, expected_prod = brute_force(z, mu, logvar, n, sampling)
    torch.testing.assert_close(log_qz.double(), expected_qz, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(log_prod.double(), expected_prod, rtol=1e-5, atol=1e-5)


def test_the_stratified_weights_are_the_papers_formula():
    batch, n = 4, 10
    weights = mss_log_weights(batch, n).exp().double()
    expected = torch.tensor([[mss_weight(i, j, batch, n) for j in range(batch)] for i in range(batch)])
    torch.testing.assert_close(weights, expected.double(), rtol=1e-6, atol=0)
    # 1/N = 0.1 on the diagonal, (N - M)/(N M) = 7/30 next to it, 1/M = 1/3 elsewhere.
    assert weights[0].tolist() == pytest.approx([0.1, 7 / 30, 1 / 3, 1 / 3])
    assert weights[3].tolist() == pytest.approx([7 / 30, 1 / 3, 1 / 3, 0.1])
    torch.testing.assert_close(weights.sum(1), torch.ones(batch, dtype=torch.float64))  # rows sum to 1
    # A batch of two: no 1/M entries; of one: only the sample's own posterior, weight 1/N.
    torch.testing.assert_close(mss_log_weights(2, n).exp(), torch.tensor([[0.1, 0.9], [0.9, 0.1]]))
    assert mss_log_weights(1, n).exp().item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at most N \\+ 1 = 11 examples"):
        mss_log_weights(12, n)


def test_with_equal_posteriors_mss_finds_q_exactly_and_mws_is_lower_by_log_n():
    """N copies of one posterior: q(z) is that posterior. MSS's weights sum to 1, MWS's to 1/N."""
    z, mu, logvar = random_posteriors(batch=8, latent=3)
    mu, logvar = mu[:1].expand(8, 3), logvar[:1].expand(8, 3)
    log_q = log_density_matrix(z, mu, logvar)
    exact = Normal(mu[0], (0.5 * logvar[0]).exp()).log_prob(z)  # [B, L]
    n = 1000
    mss_qz, mss_prod = aggregate_posterior_log_densities(log_q, n, "mss")
    torch.testing.assert_close(mss_qz, exact.sum(-1))
    torch.testing.assert_close(mss_prod, exact.sum(-1))
    mws_qz, mws_prod = aggregate_posterior_log_densities(log_q, n, "mws")
    torch.testing.assert_close(mws_qz, exact.sum(-1) - math.log(n))
    torch.testing.assert_close(mws_prod, exact.sum(-1) - 3 * math.log(n))


# ---- the decomposition against closed forms -----------------------------------------------
def gaussian_aggregate_terms(cov: torch.Tensor, s: float) -> dict[str, float]:
    """With means x ~ N(0, C) and q(z|x) = N(x, s^2 I), the aggregate posterior of a large data set
    is N(0, C + s^2 I), so: MI = H(q(z)) - H(q(z|x)), TC = sum_d H(q(z_d)) - H(q(z)), and dwKL the
    KL of N(0, C_dd + s^2) to N(0, 1), summed over d."""
    total = cov + s**2 * torch.eye(len(cov))
    logdet = torch.logdet(total).item()
    variances = total.diagonal()
    return {
        "mi": 0.5 * logdet - 0.5 * len(cov) * math.log(s**2),
        "tc": 0.5 * variances.log().sum().item() - 0.5 * logdet,
        "dwkl": 0.5 * (variances - 1 - variances.log()).sum().item(),
    }


@pytest.mark.parametrize("correlated", [False, True], ids=["independent", "z1=z2"])
def test_decomposition_of_a_gaussian_aggregate_posterior(correlated):
    """A batch of 4096 from a data set of N = 10^6 whose posterior means are N(0, C): independent
    latents (C = I, TC = 0) or z1 ~ z2 (C = all ones, TC = 0.922 nats). MSS estimates each term;
    MWS estimates each term plus its constant: MI + log N, TC + (L - 1) log N, dwKL - L log N."""
    torch.manual_seed(0)
    batch, n, s = 4096, 10**6, 0.3
    cov = torch.ones(2, 2) if correlated else torch.eye(2)
    mu = torch.randn(batch, 1).expand(batch, 2).clone() if correlated else torch.randn(batch, 2)
    logvar = torch.full_like(mu, math.log(s**2))
    z = mu + s * torch.randn_like(mu)
    exact = gaussian_aggregate_terms(cov, s)
    log_q = log_density_matrix(z, mu, logvar)
    log_q_given_x = log_q.diagonal(dim1=0, dim2=1).sum(0)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    shifts = {"mws": {"mi": math.log(n), "tc": math.log(n), "dwkl": -2 * math.log(n)}, "mss": None}
    for sampling, shift in shifts.items():
        terms = kl_decomposition(log_q_given_x, *aggregate_posterior_log_densities(log_q, n, sampling), log_pz)
        for name, value in terms.items():
            expected = exact[name] + (shift[name] if shift else 0.0)
            stderr = value.std().item() / math.sqrt(batch)
            assert abs(value.mean().item() - expected) < 4 * stderr + 0.01, (sampling, name, value.mean(), expected)
    tc = kl_decomposition(log_q_given_x, *aggregate_posterior_log_densities(log_q, n, "mss"), log_pz)["tc"].mean()
    if correlated:
        assert exact["tc"] == pytest.approx(0.9216, abs=1e-4) and tc > 0.85
    else:
        assert exact["tc"] == 0 and tc > -0.02


# ---- the model's loss -----------------------------------------------------------------------
@pytest.mark.parametrize("sampling", ["mws", "mss"])
def test_unit_weights_give_the_vae_loss_with_the_sampled_kl(sampling):
    """alpha = beta = gamma = 1: MI + TC + dwKL = log q(z|x) - log p(z) for every example, whatever
    the estimate of q(z), so the loss is the VAE's with the KL estimated at the same sample; and
    over many samples it averages to the VAE's loss with the closed-form KL."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((16, 1, 4, 4), 0.4))
    tcvae = bernoulli_model(BetaTCVAE, alpha=1.0, beta=1.0, gamma=1.0, sampling=sampling, dataset_size=1000)
    vae = bernoulli_model(VAE)
    vae.load_state_dict({k: v for k, v in tcvae.state_dict().items() if k != "train_set_size"})
    torch.manual_seed(1)
    out = tcvae.objective(x)
    torch.manual_seed(1)
    reference = vae.objective(x)  # the same z: the same random numbers in the same order
    torch.testing.assert_close(out["log_px_given_z"], reference["log_px_given_z"])
    torch.manual_seed(1)
    q = tcvae.posterior(x)
    z = q.rsample()  # the objective's sample
    sampled_kl = q.log_prob(z) - tcvae.prior.log_prob(z)
    torch.testing.assert_close(out["mi"] + out["tc"] + out["dwkl"], sampled_kl, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["loss"], (-out["log_px_given_z"] + sampled_kl).mean(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(out["loss"], reference["loss"] + (sampled_kl - reference["kl"]).mean())
    torch.testing.assert_close(out["elbo"], reference["elbo"])  # the bound keeps the closed-form KL
    # In expectation: the sampled KL averages to the closed form, the loss to the VAE's.
    differences = []
    with torch.no_grad():
        for seed in range(500):
            torch.manual_seed(seed)
            loss = tcvae.objective(x)["loss"]
            torch.manual_seed(seed)
            differences.append(loss - vae.objective(x)["loss"])
    differences = torch.stack(differences)
    assert abs(differences.mean()) < 4 * differences.std() / math.sqrt(len(differences))


def test_a_batch_larger_than_n_plus_one_is_refused_in_one_line_by_mss_only():
    """MSS spreads the N training examples over the B - 1 others of a batch; a model evaluated on a
    bigger batch (as eval.py may do) says what to change instead of failing inside the weights."""
    x = torch.bernoulli(torch.full((8, 1, 4, 4), 0.4))
    with pytest.raises(UserError, match=r"^model.sampling=mss needs batches of at most N \+ 1 = 4 examples") as err:
        bernoulli_model(BetaTCVAE, sampling="mss", dataset_size=3).objective(x)
    assert "\n" not in str(err.value) and "batch of 8" in str(err.value)
    assert bernoulli_model(BetaTCVAE, sampling="mss", dataset_size=7).objective(x)["loss"].isfinite()
    assert bernoulli_model(BetaTCVAE, sampling="mws", dataset_size=3).objective(x)["loss"].isfinite()


# ---- a training run ---------------------------------------------------------------------------
@pytest.mark.slow
def test_a_training_run_logs_the_decomposition_and_weighs_it_in_the_loss(tmp_path):
    """train.py on synthetic data (512 training images): N is read from the data and kept in the
    checkpoint; every logged loss (per step, per epoch, validation) is recon + alpha mi + beta tc +
    gamma dwkl of the same row, and elbo is -(recon + kl) with the closed-form KL."""
    alpha, beta, gamma = 0.5, 6.0, 2.0
    result = run_cli(
        [
            "data=synthetic",
            "model=beta_tcvae",
            f"model.alpha={alpha}",
            f"model.beta={beta}",
            f"model.gamma={gamma}",
            "size=small",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=2",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "test=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "csv" / "metrics.csv")))
    checked = {"train/": 0, "train/_epoch": 0, "val/": 0}
    for row in rows:
        for prefix, suffix in (("train/", ""), ("train/", "_epoch"), ("val/", "")):
            value = {
                name: row.get(f"{prefix}{name}{suffix}") for name in ("loss", "recon", "kl", "mi", "tc", "dwkl", "elbo")
            }
            if not value["loss"]:
                continue
            v = {name: float(x) for name, x in value.items()}
            assert v["loss"] == pytest.approx(
                v["recon"] + alpha * v["mi"] + beta * v["tc"] + gamma * v["dwkl"], rel=1e-5
            )
            assert v["elbo"] == pytest.approx(-(v["recon"] + v["kl"]), rel=1e-5)
            checked[prefix + suffix] += 1
    # 8 steps an epoch: a row every 2 steps, an epoch row and a validation row per epoch.
    assert checked == {"train/": 8, "train/_epoch": 2, "val/": 2}, checked
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["state_dict"]["train_set_size"].item() == 512
