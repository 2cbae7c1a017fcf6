"""DIP-VAE and FactorVAE: their covariances, penalties, shuffles and density-ratio estimate against
independent computations, and their effect read back from training runs."""

import csv
import math

import pytest
import torch

from vaelab import objectives
from vaelab.building import build_model
from vaelab.checkpoints import load_checkpoint
from vaelab.config import compose_config
from vaelab.models.factor_vae import TCDiscriminator
from vaelab.training import train


def test_dip_i_covariance_is_the_population_covariance_of_the_means():
    mu = torch.randn(50, 4, dtype=torch.float64) @ torch.randn(4, 4, dtype=torch.float64)
    assert torch.allclose(objectives.dip_covariance(mu), torch.cov(mu.T, correction=0), atol=1e-12)


def test_dip_ii_covariance_is_that_of_draws_from_the_mixture_of_posteriors():
    """Cov_q(z)[z] of q(z) = (1/B) sum_i N(mu_i, Sigma_i): E[z z^T] - E[z] E[z]^T written out, and
    the covariance of a million draws from the mixture."""
    g = torch.Generator().manual_seed(0)
    b, d = 6, 3
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    tril = torch.randn(b, d, d, generator=g, dtype=torch.float64).tril()
    sigma = tril @ tril.transpose(-1, -2)
    cov = objectives.dip_covariance(mu, sigma)
    second_moment = (sigma + mu.unsqueeze(-1) * mu.unsqueeze(-2)).mean(0)
    assert torch.allclose(cov, second_moment - torch.outer(mu.mean(0), mu.mean(0)), atol=1e-12)
    n = 1_000_000
    which = torch.randint(b, (n,), generator=g)
    draws = mu[which] + (tril[which] @ torch.randn(n, d, 1, generator=g, dtype=torch.float64)).squeeze(-1)
    assert torch.allclose(cov, torch.cov(draws.T), atol=0.02)


def test_dip_penalties_are_the_double_loop():
    c = torch.randn(5, 5, dtype=torch.float64)
    offdiag, diag = objectives.dip_penalties(c)
    assert float(offdiag) == pytest.approx(sum(float(c[i, j]) ** 2 for i in range(5) for j in range(5) if i != j))
    assert float(diag) == pytest.approx(sum((float(c[i, i]) - 1) ** 2 for i in range(5)))


def test_permute_dims_shuffles_each_dimension_on_its_own():
    torch.manual_seed(0)
    base = torch.randn(4000, 1)
    z = torch.cat([base, base + 0.1 * torch.randn(4000, 1), torch.arange(4000.0).unsqueeze(1)], dim=1)
    shuffled = objectives.permute_dims(z)
    for d in range(3):  # each column keeps its values
        assert torch.equal(shuffled[:, d].sort().values, z[:, d].sort().values)
    assert torch.corrcoef(z.T)[0, 1] > 0.99 and abs(torch.corrcoef(shuffled.T)[0, 1]) < 0.05
    assert not torch.equal(shuffled[:, 2], z[:, 2])


def test_the_discriminator_estimates_the_total_correlation_of_a_correlated_gaussian():
    """For z ~ N(0, [[1, rho], [rho, 1]]), TC = KL(q(z) || q(z_1) q(z_2)) = -log(1 - rho^2) / 2:
    the discriminator trained by the density-ratio losses on it and its shuffles estimates that."""
    torch.manual_seed(0)
    rho = 0.8
    chol = torch.linalg.cholesky(torch.tensor([[1.0, rho], [rho, 1.0]]))
    discriminator = TCDiscriminator(2, [64, 64])
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=3e-3)
    for _ in range(1500):
        z = torch.randn(256, 2) @ chol.T
        loss = objectives.density_ratio_losses(discriminator(z), discriminator(objectives.permute_dims(z)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        estimate = float(discriminator(torch.randn(100_000, 2) @ chol.T).mean())
    assert estimate == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.08)


def rows(run, key):
    with open(run / "csv" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get(key)]


COMMON = [
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=60",
    "trainer.enable_progress_bar=false",
    "size=small",
    "test=false",
]


# A small discriminator that learns fast, on a VAE with few latents that it uses (beta 0.1): its
# aggregate posterior then has a total correlation to see.
FACTOR = [
    "model=factor_vae",
    "model.discriminator_hidden=[64,64]",
    "model.discriminator_lr=1e-3",
    "model.beta=0.1",
    "size.latent_dim=4",
    "trainer.max_epochs=4",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """DIP-VAE I and II and FactorVAE, each with its penalty off and on (digits, 3 short epochs)."""
    root = tmp_path_factory.mktemp("disentangling")
    settings = {
        **{
            f"dip_{kind}_{state}": ["model=dip_vae", f"model.kind={kind}", f"model.lambda_od={weight}"]
            + (["model.lambda_d=0"] if weight == 0 else [])
            for kind in ("i", "ii")
            for state, weight in (("off", 0), ("on", 10))
        },
        "factor_off": [*FACTOR, "model.gamma=0"],
        "factor_on": [*FACTOR, "model.gamma=30"],
    }
    for name, overrides in settings.items():
        train(compose_config([*COMMON, *overrides], root / name))
    return root


@pytest.mark.parametrize("kind", ["i", "ii"])
def test_the_dip_penalty_brings_the_covariance_towards_the_identity(runs, kind):
    """The weighted penalty lambda_od * offdiag + lambda_d * diag (lambda_d = 10 lambda_od for
    DIP-VAE-I, = lambda_od for II), of the run trained with it against the run trained without."""
    lambda_od, lambda_d = 10, 100 if kind == "i" else 10
    off, on = (rows(runs / f"dip_{kind}_{state}", "val/dip_offdiag")[-1] for state in ("off", "on"))
    penalty = lambda row: lambda_od * float(row["val/dip_offdiag"]) + lambda_d * float(row["val/dip_diag"])  # noqa: E731
    assert penalty(on) < penalty(off) / 3, (on, off)
    # The logged loss is its weighted terms.
    assert float(on["val/loss"]) == pytest.approx(float(on["val/recon"]) + float(on["val/kl"]) + penalty(on), rel=1e-4)


def test_the_total_correlation_estimate_is_logged_and_falls_with_its_weight(runs):
    off, on = (rows(runs / name, "val/tc")[-1] for name in ("factor_off", "factor_on"))
    assert float(off["val/tc"]) > 0.08, off  # the discriminator sees a correlated q(z)
    assert float(on["val/tc"]) < float(off["val/tc"]) / 3, (on, off)
    # The logged loss is its weighted terms plus the discriminator's loss (beta = 0.1).
    for row, gamma in ((off, 0), (on, 30)):
        vae = float(row["val/recon"]) + 0.1 * float(row["val/kl"]) + gamma * float(row["val/tc"])
        assert float(row["val/loss"]) == pytest.approx(vae + float(row["val/discriminator_loss"]), rel=1e-4)


def test_the_discriminator_learns_with_its_own_settings_also_after_a_resume_with_a_new_rate(runs):
    run = runs / "factor_on"
    groups = load_checkpoint(str(run / "checkpoints" / "last.ckpt"))["optimizer_states"][0]["param_groups"]
    assert [(g["name"], g["lr"], tuple(g["betas"])) for g in groups] == [
        ("vae", 1e-3, (0.9, 0.999)),
        ("discriminator", 1e-3, (0.5, 0.9)),
    ]
    overrides = [*FACTOR, "model.gamma=30", "trainer.max_epochs=5", "model.optimizer.lr=5e-4", "ckpt_path=last"]
    train(compose_config([*COMMON, *overrides], run))
    groups = load_checkpoint(str(run / "checkpoints" / "last.ckpt"))["optimizer_states"][0]["param_groups"]
    assert [(g["name"], g["lr"]) for g in groups] == [("vae", 5e-4), ("discriminator", 1e-3)]
    assert len(rows(run, "val/tc")) == 5  # it trained on


def test_each_part_of_factor_vae_gets_only_its_own_loss_gradient():
    model = build_model(compose_config(["model=factor_vae", "model.discriminator_hidden=[16]", "size=small"], "unused"))
    x = torch.rand(8, *model.image_shape).bernoulli()
    torch.manual_seed(1)
    terms = model.objective(x)
    parts = {"all": terms["loss"], "discriminator": terms["discriminator_loss"]}
    parts["vae"] = terms["loss"] - terms["discriminator_loss"]
    grads = {}
    for name, loss in parts.items():
        grads[name] = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True, allow_unused=True)
    names = [n for n, _ in model.named_parameters()]
    for i, name in enumerate(names):
        own = "discriminator" if name.startswith("discriminator.") else "vae"
        other = "vae" if own == "discriminator" else "discriminator"
        assert grads[other][i] is None or not grads[other][i].any(), name
        assert torch.allclose(grads["all"][i], grads[own][i]), name
