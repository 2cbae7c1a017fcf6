"""A second stochastic layer (model.top_latents > 0): the two layers' densities against
torch.distributions built from the same networks, the importance-sampled likelihood against a
brute-force integral over both layers, sampling moments, the one-layer VAE as the case whose
second layer is cut off, training runs of the VAE and the IWAE read back from their logs, eval,
resume, and refusals."""

import csv
import math

import pytest
import torch
from sklearn.datasets import load_digits
from torch.distributions import Bernoulli, Independent, Normal

from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.models import IWAE, VAE
from vaelab.training import check_config, train

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def two_layer(image_shape=(1, 4, 4), latent=3, top=2, cls=VAE, **kwargs):
    net = {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}
    return cls(list(image_shape), latent, net, {"name": "bernoulli"}, ADAM, top_latents=top, top_hidden=[8], **kwargs)


def gaussian(params: torch.Tensor) -> Independent:
    mu, logvar = params.chunk(2, -1)
    return Independent(Normal(mu, (0.5 * logvar).exp()), 1)


def test_log_q_and_log_p_are_the_two_layers_densities():
    torch.manual_seed(0)
    model = two_layer()
    x = torch.rand(5, 1, 4, 4).round()
    with torch.no_grad():
        q = model.posterior(x)
        z, log_q = q.rsample_with_log_prob(7)  # [7, 5, 5]
        z1, z2 = z[..., :3], z[..., 3:]
        expected_q = gaussian(model.encoder(x)).log_prob(z1) + gaussian(model.upward(z1)).log_prob(z2)
        standard = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
        expected_p = gaussian(model.prior.downward(z2)).log_prob(z1) + standard.log_prob(z2)
        torch.testing.assert_close(log_q, expected_q, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(q.log_prob(z), expected_q, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.prior.log_prob(z), expected_p, atol=1e-5, rtol=1e-5)
        # The decoder reads z1 alone: p(x|z) does not move with z2.
        moved = torch.cat([z1, z2 + 3.0], -1)
        torch.testing.assert_close(model.decoder_params(moved), model.decoder(z1))


def test_the_importance_sampled_likelihood_is_the_integral_over_both_layers():
    """log p(x) = log sum over a grid of (z1, z2) of p(x|z1) p(z1|z2) p(z2) dz1 dz2 for one latent
    in each layer and every image of three pixels; the k-sample bound meets it, and the ELBO stays
    below it. q is made wider than the posterior (N(0, 2^2), then N(0, 1.5^2) for z2), so that
    the importance weights' variance is small and k = 200000 reaches the integral to 0.01 nats."""
    torch.manual_seed(3)
    model = two_layer(image_shape=(1, 1, 3), latent=1, top=1)
    with torch.no_grad():
        for scale, net in ((2, model.prior.downward), (3, model.decoder)):  # a prior and likelihood with some shape
            for layer in net.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.weight.mul_(scale)
        for last, std in ((model.encoder.head, 2.0), (model.upward[-1], 1.5)):
            last.weight.zero_()
            last.bias.copy_(torch.tensor([0.0, 2 * math.log(std)]))
        images = torch.tensor([[(i >> b) & 1 for b in range(3)] for i in range(8)], dtype=torch.float32)
        x = images.view(8, 1, 1, 3)
        grid = torch.linspace(-25, 25, 2501)  # p(z1|z2)'s spread is 0.2 to 3.3 here
        step = float(grid[1] - grid[0])
        logits = model.decoder(grid[:, None]).flatten(1)  # [G, 3]
        log_px_given_z1 = Bernoulli(logits=logits).log_prob(images[:, None]).sum(-1)  # [8, G]
        p1 = gaussian(model.prior.downward(grid[:, None])).base_dist  # p(z1|z2) for each z2 of the grid
        log_prior = Normal(p1.mean, p1.stddev).log_prob(grid[None, :]) + Normal(0.0, 1.0).log_prob(grid)[:, None]
        brute = torch.stack([torch.logsumexp((log_prior + row).flatten(), 0) for row in log_px_given_z1])
        brute += 2 * math.log(step)  # [8], log p(x) of each image
        torch.manual_seed(4)
        bound, _ = model.importance_sampling(x, k=200000, chunk=20000)
        elbo = model.terms(x.repeat(1000, 1, 1, 1))["elbo"].view(1000, 8).mean(0)
    assert torch.logsumexp(brute, 0) == pytest.approx(0.0, abs=1e-4)  # the eight images' probabilities sum to 1
    torch.testing.assert_close(bound, brute, atol=0.01, rtol=0)
    assert (elbo < brute - 1).all()  # q is far from the posterior: the ELBO is a loose bound


def test_sampling_follows_each_layer():
    torch.manual_seed(1)
    model = two_layer()
    n = 40000
    with torch.no_grad():
        z = model.prior.sample(n, torch.Generator().manual_seed(2))
        z1, z2 = z[:, :3], z[:, 3:]
        p1 = gaussian(model.prior.downward(z2)).base_dist
        residual = (z1 - p1.mean) / p1.stddev
        x = torch.rand(1, 1, 4, 4).round()
        q = model.posterior(x)
        w = q.rsample(n)[:, 0]  # [n, 5]
        q1 = gaussian(model.encoder(x)).base_dist
        q2 = gaussian(model.upward(w[:, :3])).base_dist
        first = (w[:, :3] - q1.mean) / q1.stddev
        second = (w[:, 3:] - q2.mean) / q2.stddev
    for standard in (z2, residual, first, second):  # each N(0, I): mean 0 and variance 1 within 5 standard errors
        assert standard.mean(0).abs().max() < 5 / math.sqrt(n)
        assert (standard.var(0) - 1).abs().max() < 5 * math.sqrt(2 / n)
    assert (z1.var(0) > p1.variance.mean(0)).all()  # the marginal of z1 spreads wider than each conditional


def test_with_its_second_layer_cut_off_it_is_the_one_layer_vae():
    """q(z2|z1) = p(z2) = N(0, I) and p(z1|z2) = N(0, I): log w loses the z2 terms draw for draw, so
    the bound is the one-layer VAE's on the same draws of z1, and the Monte-Carlo KL converges to
    the one-layer closed form."""
    torch.manual_seed(0)
    model = two_layer(latent=3, top=2)
    one = VAE([1, 4, 4], 3, {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}, {"name": "bernoulli"}, ADAM)
    one.encoder.load_state_dict(model.encoder.state_dict())
    one.decoder.load_state_dict(model.decoder.state_dict())
    with torch.no_grad():
        for last in (model.upward[-1], model.prior.downward[-1]):
            last.weight.zero_()
            last.bias.zero_()
        x = torch.rand(6, 1, 4, 4).round()
        torch.manual_seed(7)
        two_bound, two_px = model.importance_sampling(x, k=64, chunk=64)
        torch.manual_seed(7)
        one_bound, one_px = one.importance_sampling(x, k=64, chunk=64)
        q = model.posterior(x)
        z, log_q = q.rsample_with_log_prob(20000)
        log_ratio = log_q - model.prior.log_prob(z)  # [S, B]
        kl, per_dim = model.prior.kl(q, z, log_q=log_q)
        exact = one.posterior(x).kl_to_standard_normal()
    torch.testing.assert_close(two_bound, one_bound, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(two_px, one_px, atol=1e-5, rtol=1e-6)
    assert per_dim is None
    assert ((kl - exact).abs() < 5 * log_ratio.std(0) / math.sqrt(len(z))).all()


# ---- runs ---------------------------------------------------------------------------------------
QUICK = [
    "trainer.enable_progress_bar=false",
    "size=small",
    "size.latent_dim=8",
    "model.top_latents=4",
    "model.top_hidden=[32]",
    "trainer.max_epochs=10",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hierarchy")
    settings = {"vae": ["model.test_k=50"], "iwae": ["model=iwae", "model.k=5", "model.k_eval=5"]}
    return {
        name: (folder / name, train(compose_config([*QUICK, *extra, f"hydra.run.dir={folder / name}"], folder / name)))
        for name, extra in settings.items()
    }


def logged(run_dir, key: str) -> list[float]:
    return [float(r[key]) for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get(key)]


@pytest.mark.parametrize("name", ["vae", "iwae"])
def test_a_two_layer_model_trains_on_its_bound(runs, name):
    run_dir, _ = runs[name]
    bound = logged(run_dir, "val/elbo" if name == "vae" else "val/iwae_bound")
    assert len(bound) == 10 and bound[-1] > bound[0] + 2  # the bound improved over the run
    # The second layer learned: the trained model with its z1 <-> z2 networks put back to their
    # initial values has a worse bound (p(z1|z2) learned where the posteriors put z1).
    model = model_from_checkpoint(load_checkpoint(run_dir / "checkpoints" / "best.ckpt")).eval()
    initial = type(model)(**model.hparams)
    x = torch.tensor(load_digits().images[:300] / 16, dtype=torch.float32).unsqueeze(1).round()
    with torch.no_grad():
        torch.manual_seed(0)
        trained = model.importance_sampling(x, 50)[0].mean()
        model.upward.load_state_dict(initial.upward.state_dict())
        model.prior.load_state_dict(initial.prior.state_dict())
        torch.manual_seed(0)
        untrained_top = model.importance_sampling(x, 50)[0].mean()
    assert trained > untrained_top + 1


def test_eval_of_a_two_layer_model_samples_both_layers(runs, tmp_path):
    run_dir, metrics = runs["vae"]
    cfg = compose_config([f"ckpt_path={run_dir}/checkpoints/best.ckpt", "k=200"], tmp_path, config_name="eval")
    results = evaluate_checkpoint(cfg)
    assert results["latent_dim"] == 12 and results["kl_per_dim"] is None
    assert results["kl_estimate"].startswith("Monte Carlo")
    # eval's sampler and the run's own test pass agree (a wrong layer in either would part them).
    assert abs(results["elbo"] - metrics["test/elbo"]) < 0.5
    assert results["nll"] <= -metrics["test/iwae_bound"] + 0.1  # k = 200 is tighter than k = 50
    first, second = results["active_units_per_layer"]
    assert first + second == results["active_units"] and first == sum(a > 0.01 for a in results["unit_activity"][:8])
    for picture in ("samples", "traversals", "reconstructions"):
        assert (tmp_path / "images" / f"{picture}.png").is_file()


def test_a_two_layer_run_resumes_with_its_second_layer(runs):
    run_dir, _ = runs["iwae"]
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    overrides = [*QUICK, "model=iwae", "model.k=5", "model.k_eval=5", "trainer.max_epochs=11", "ckpt_path=last"]
    train(compose_config([*overrides, f"hydra.run.dir={run_dir}"], run_dir))
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert len(logged(run_dir, "val/iwae_bound")) == 11
    assert before.keys() == after.keys() and "upward.0.weight" in after and "prior.downward.0.weight" in after
    assert not torch.equal(before["upward.0.weight"], after["upward.0.weight"])  # it went on training


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.top_latents=0"], "model.top_hidden has no effect without a second stochastic layer"),
        (["model=beta_tcvae"], "model.top_latents composes with model=vae, beta_vae and iwae"),
        (["model.posterior=full"], "model.posterior=full is not supported with a second layer"),
        (["model/prior=mog"], "use model/prior=standard"),
        (["model=iwae", "model.dreg=true"], "model.dreg=true is implemented for one Gaussian layer only"),
        (["model.estimator=score_function"], "model.top_latents trains with reparameterized gradients"),
        (["model=beta_vae", "model.free_bits=0.5"], "model.free_bits needs a per-dimension KL"),
        (["model.top_hidden=[0]"], "model.top_hidden=[0] must be a non-empty list of positive layer widths"),
        (["model.top_hidden=[]"], "model.top_hidden=[] must be a non-empty list"),
    ],
)
def test_settings_a_two_layer_model_cannot_honour_are_refused(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        check_config(compose_config([*QUICK, *overrides], tmp_path))


def test_what_a_second_layer_cannot_honour_is_refused_when_the_model_is_built_directly():
    with pytest.raises(UserError, match="model.dreg=true is implemented for one Gaussian layer only"):
        two_layer(cls=IWAE, dreg=True)
    with pytest.raises(UserError, match="model.top_latents needs model.posterior=diagonal, model/prior=standard"):
        two_layer(prior={"_target_": "vaelab.priors.MixtureOfGaussiansPrior", "components": 3})
