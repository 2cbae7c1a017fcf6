"""The prior group (model/prior=standard|mog|vamp): the densities against torch.distributions and
a brute-force loop over the VampPrior's pseudo-inputs, the Monte-Carlo KL against closed forms,
sampling moments, DReG's fixed prior, runs whose learned prior fits their posteriors better than
N(0, I) does, a fixed one-component mixture at N(0, I) that gives the standard prior's numbers,
eval.py's pictures and the refusals."""

import csv
import math

import pytest
import torch
from torch import distributions as D

from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.models import IWAE, VAE
from vaelab.priors import KL_SAMPLES, MixtureOfGaussiansPrior, StandardNormalPrior
from vaelab.training import check_config, train

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
MLP = {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}
VAMP = {"_target_": "vaelab.priors.VampPrior", "components": 7}


def random_mixture(latent: int = 3, components: int = 4) -> MixtureOfGaussiansPrior:
    prior = MixtureOfGaussiansPrior(latent, components=components)
    with torch.no_grad():
        prior.logvars.normal_(0, 0.5)
        prior.logits.normal_()
    return prior


def test_the_mixture_of_gaussians_is_torch_distributions_mixture():
    torch.manual_seed(0)
    prior = random_mixture()
    std = (0.5 * prior.logvars).exp()
    reference = D.MixtureSameFamily(D.Categorical(logits=prior.logits), D.Independent(D.Normal(prior.means, std), 1))
    z = torch.randn(6, 5, 3) * 2
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    for d in range(3):
        marginal = D.MixtureSameFamily(D.Categorical(logits=prior.logits), D.Normal(prior.means[:, d], std[:, d]))
        torch.testing.assert_close(prior.marginal_log_prob(z)[..., d], marginal.log_prob(z[..., d]))
    torch.testing.assert_close(prior.log_prob(z, fixed=True), reference.log_prob(z))


@pytest.mark.parametrize("posterior", ["diagonal", "full"])
def test_the_vamp_prior_is_the_mean_of_the_encoders_posteriors_at_its_pseudo_inputs(posterior):
    """log p(z) = log (1/K) sum_k q(z|u_k), each q(z|u_k) rebuilt from the encoder's output alone."""
    torch.manual_seed(1)
    model = VAE([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, prior=VAMP, posterior=posterior)
    u = model.prior.pseudo_inputs
    assert u.shape == (7, 1, 4, 4) and 0 <= u.min() and u.max() <= 1
    with torch.no_grad():  # spread the pseudo-inputs so the components differ
        model.prior.pseudo_input_params.uniform_(-0.2, 1.2)
    z = torch.randn(4, 5, 3)
    densities, marginals = [], []
    for k in range(7):
        params = model.encoder(model.prior.pseudo_inputs[k : k + 1])[0]
        mu, log_var = params[:3], params[3:6]
        if posterior == "diagonal":
            q = D.Independent(D.Normal(mu, (0.5 * log_var).exp()), 1)
            std = (0.5 * log_var).exp()
        else:
            scale = torch.diag((0.5 * log_var).exp())
            rows, cols = torch.tril_indices(3, 3, -1)
            scale[rows, cols] = params[6:]
            q = D.MultivariateNormal(mu, scale_tril=scale)
            std = q.covariance_matrix.diagonal().sqrt()
        densities.append(q.log_prob(z))
        marginals.append(D.Normal(mu, std).log_prob(z))
    expected = torch.logsumexp(torch.stack(densities), 0) - math.log(7)
    torch.testing.assert_close(model.prior.log_prob(z), expected, atol=1e-5, rtol=1e-5)
    expected_marginal = torch.logsumexp(torch.stack(marginals), 0) - math.log(7)
    torch.testing.assert_close(model.prior.marginal_log_prob(z), expected_marginal, atol=1e-5, rtol=1e-5)


def test_the_monte_carlo_kl_converges_to_the_closed_form():
    """One learned component N(m, s^2): KL(q || p) has a closed form to compare the estimate with."""
    torch.manual_seed(2)
    prior = random_mixture(components=1)
    with torch.no_grad():
        prior.means.normal_()
    q = VAE([1, 2, 2], 3, MLP, {"name": "bernoulli"}, ADAM).posterior_family.from_params(torch.randn(4, 6))
    q_dist = D.Normal(q.mu, q.std)
    p_dist = D.Normal(prior.means[0], (0.5 * prior.logvars[0]).exp())
    exact_per_dim = D.kl_divergence(q_dist, p_dist)
    kl, per_dim = prior.kl(q, q.rsample(400_000))
    torch.testing.assert_close(kl, exact_per_dim.sum(-1), atol=0.02, rtol=0)
    torch.testing.assert_close(per_dim, exact_per_dim, atol=0.02, rtol=0)
    kl_fresh, _ = prior.kl(q)  # KL_SAMPLES fresh samples: unbiased, noisier
    assert (kl_fresh - exact_per_dim.sum(-1)).abs().max() < 6 * exact_per_dim.sum(-1).max() / math.sqrt(KL_SAMPLES)
    standard_kl, standard_per_dim = StandardNormalPrior(3).kl(q)
    torch.testing.assert_close(standard_per_dim, D.kl_divergence(q_dist, D.Normal(0.0, 1.0)))
    torch.testing.assert_close(standard_kl, standard_per_dim.sum(-1))


def test_samples_have_the_mixtures_moments_and_follow_the_generator():
    torch.manual_seed(3)
    prior = random_mixture()
    weights = prior.logits.softmax(-1)[:, None]
    mean = (weights * prior.means).sum(0)
    var = (weights * (prior.logvars.exp() + prior.means**2)).sum(0) - mean**2
    draws = prior.sample(200_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), mean.detach(), atol=0.02, rtol=0)
    torch.testing.assert_close(draws.var(0), var.detach(), atol=0.03, rtol=0)
    assert not draws.requires_grad
    model = VAE([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, prior=VAMP)
    vamp = model.prior.sample(100_000, torch.Generator().manual_seed(0))
    components = model.posterior(model.prior.pseudo_inputs)
    torch.testing.assert_close(vamp.mean(0), components.mu.mean(0).detach(), atol=0.02, rtol=0)
    assert torch.equal(
        model.prior.sample(5, torch.Generator().manual_seed(4)), model.prior.sample(5, torch.Generator().manual_seed(4))
    )


def test_dregs_encoder_term_sends_nothing_to_a_learned_prior():
    """The encoder's DReG term differentiates log w along z only: the pseudo-inputs (and through
    them the encoder) get their gradient from the generative term alone."""
    torch.manual_seed(4)
    model = IWAE([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, prior=VAMP, k=3, dreg=True)
    z = torch.randn(3, 2, 3, requires_grad=True)
    model.prior.log_prob(z, fixed=True).sum().backward()
    assert z.grad is not None and model.prior.pseudo_input_params.grad is None
    assert all(p.grad is None for p in model.encoder.parameters())
    model.prior.log_prob(z).sum().backward()
    assert model.prior.pseudo_input_params.grad.abs().sum() > 0


@pytest.mark.parametrize("prior", [VAMP, {"_target_": "vaelab.priors.MixtureOfGaussiansPrior", "components": 3}])
def test_dreg_gives_the_generative_model_and_the_prior_the_iwae_gradient(prior):
    """DReG changes the encoder's gradient only: on the same draws, the decoder's and a learned
    prior's gradients equal the plain IWAE bound's (Tucker et al. 2018, eq. 8)."""
    grads = {}
    for dreg in (False, True):
        torch.manual_seed(7)
        model = IWAE([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, prior=prior, k=5, dreg=dreg).train()
        x = torch.rand(6, 1, 4, 4).round()
        loss, _ = model.step_metrics(x)
        loss.backward()
        grads[dreg] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for name in grads[False]:
        if name.startswith(("decoder.", "prior.means", "prior.logvars", "prior.logits")):
            torch.testing.assert_close(grads[True][name], grads[False][name], atol=1e-6, rtol=1e-5)
    encoder = [n for n in grads[False] if n.startswith("encoder.")]
    assert any(not torch.allclose(grads[True][n], grads[False][n]) for n in encoder)  # DReG's own part


QUICK = [
    "trainer.enable_progress_bar=false",
    "size=small",
    "size.latent_dim=4",
    "trainer.max_epochs=10",
    "model.test_k=50",
]
ONE_STANDARD_COMPONENT = [
    "model/prior=mog",
    "model.prior.components=1",
    "model.prior.init_std=0",
    "model.prior.learn=false",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("priors")
    settings = {
        "standard": [],
        "mog1": ONE_STANDARD_COMPONENT,
        "vamp": ["model/prior=vamp", "model.prior.components=50"],
        "mog": ["model/prior=mog"],
    }
    return {
        name: (folder / name, train(compose_config([*QUICK, *extra], folder / name)))
        for name, extra in settings.items()
    }


def logged_val_elbo(run_dir) -> list[float]:
    return [float(r["val/elbo"]) for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("val/elbo")]


@pytest.mark.parametrize("name", ["vamp", "mog"])
def test_a_learned_prior_trains_and_fits_the_posteriors_better_than_n01(runs, name):
    run_dir, _ = runs[name]
    val = logged_val_elbo(run_dir)
    assert len(val) == 10 and val[-1] > val[0] + 2  # the bound improved over the run
    model = model_from_checkpoint(load_checkpoint(str(run_dir / "checkpoints" / "best.ckpt"))).eval()
    assert not model.prior.closed_form
    from vaelab.building import instantiate_plain
    from vaelab.data import Split  # noqa: F401 (the data module gives its splits)

    datamodule = instantiate_plain(compose_config(QUICK, run_dir.parent / f"{name}-data").data)
    datamodule.prepare()
    x = datamodule.splits["test"].unit(len(datamodule.splits["test"]))
    with torch.no_grad():
        q = model.posterior(x)
        kl_own = model.prior.kl(q)[0].mean()
        kl_standard = StandardNormalPrior(4).kl(q)[0].mean()
    # The learned prior moved towards the aggregate posterior: the same posteriors cost fewer nats
    # under it than under N(0, I). The prior at its initial values does not (measured: more).
    assert kl_own < kl_standard - 0.1, (kl_own, kl_standard)
    untrained = model_from_checkpoint(load_checkpoint(str(run_dir / "checkpoints" / "best.ckpt"))).eval()
    fresh = VAE([1, 8, 8], 4, MLP, {"name": "bernoulli"}, ADAM, prior=dict(model.hparams.prior)).prior
    untrained.prior.load_state_dict(fresh.state_dict())
    with torch.no_grad():
        assert untrained.prior.kl(q)[0].mean() > kl_own + 0.1


def test_a_fixed_standard_component_gives_the_standard_priors_numbers(runs):
    """mog with one fixed component at N(0, I) is the standard prior: on the same weights its
    importance-sampled NLL is the same to float rounding and its Monte-Carlo KL the closed form's
    to sampling error; trained, the two runs end within a fraction of a nat."""
    standard_dir, standard = runs["standard"]
    _, mog1 = runs["mog1"]
    model = model_from_checkpoint(load_checkpoint(str(standard_dir / "checkpoints" / "best.ckpt"))).eval()
    swapped = model_from_checkpoint(load_checkpoint(str(standard_dir / "checkpoints" / "best.ckpt"))).eval()
    swapped.prior = MixtureOfGaussiansPrior(4, components=1, init_std=0.0, learn=False)
    x = torch.rand(64, 1, 8, 8).round()
    torch.manual_seed(0)
    nll, _ = model.importance_sampling(x, 200)
    torch.manual_seed(0)
    nll_swapped, _ = swapped.importance_sampling(x, 200)
    torch.testing.assert_close(nll_swapped, nll, atol=1e-4, rtol=0)
    with torch.no_grad():
        q = model.posterior(x)
        exact, estimate = model.prior.kl(q)[0], swapped.prior.kl(q, q.rsample(20_000))[0]
    torch.testing.assert_close(estimate, exact, atol=0.05, rtol=0.02)
    for key in ("test/iwae_bound", "test/elbo"):
        assert abs(mog1[key] - standard[key]) < 0.5, (key, mog1[key], standard[key])
    assert logged_val_elbo(runs["mog1"][0])[-1] > logged_val_elbo(runs["mog1"][0])[0] + 2


def test_eval_draws_the_pseudo_inputs_and_says_the_kl_is_estimated(runs, tmp_path, capsys):
    run_dir, metrics = runs["vamp"]
    cfg = compose_config([f"ckpt_path={run_dir}/checkpoints/best.ckpt", "k=100"], tmp_path / "eval", config_name="eval")
    results = evaluate_checkpoint(cfg)
    assert results["kl_estimate"] == f"Monte Carlo, {KL_SAMPLES} samples of q"
    assert "(KL: Monte Carlo" in capsys.readouterr().out
    assert abs(results["elbo"] - metrics["test/elbo"]) < 0.5  # eval's KL estimate is training's quantity
    for name in ("samples", "pseudo_inputs", "traversals"):
        assert (tmp_path / "eval" / "images" / f"{name}.png").is_file()


def test_a_resumed_vamp_run_keeps_its_learned_pseudo_inputs(runs, tmp_path):
    import shutil

    run_dir, _ = runs["vamp"]
    shutil.copytree(run_dir, tmp_path / "run")
    before = load_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"))["state_dict"]["prior.pseudo_input_params"]
    overrides = [*QUICK, "model/prior=vamp", "model.prior.components=50", "trainer.max_epochs=11", "ckpt_path=last"]
    metrics = train(compose_config(overrides, tmp_path / "run"))
    after = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))["state_dict"][
        "prior.pseudo_input_params"
    ]
    assert math.isfinite(metrics["test/elbo"])
    # One more epoch moved them a little from where the first run left them (not from a fresh start).
    assert 0 < (after - before).abs().max() < 0.05 < (before - 0.05).abs().max()


def test_an_iwae_with_a_learned_prior_trains_with_dreg():
    torch.manual_seed(5)
    model = IWAE(
        [1, 4, 4],
        3,
        MLP,
        {"name": "bernoulli"},
        ADAM,
        prior={"_target_": "vaelab.priors.MixtureOfGaussiansPrior"},
        k=4,
        dreg=True,
    )
    model.train()
    x = torch.rand(8, 1, 4, 4).round()
    loss, metrics = model.step_metrics(x)
    loss.backward()
    assert model.prior.means.grad.abs().sum() > 0 and model.prior.logits.grad.abs().sum() > 0
    assert math.isfinite(metrics["kl"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=beta_tcvae", "model/prior=vamp"], "model=beta_tcvae splits its KL"),
        (["model=dip_vae", "model/prior=mog"], "model=dip_vae matches a covariance"),
        (["model=factor_vae", "model/prior=mog"], "model=factor_vae weighs its KL"),
        (["model=mmd_vae", "model/prior=vamp"], "model=mmd_vae matches q"),
        (["model=cvae", "model/prior=mog"], "model=cvae conditions"),
        (["model=beta_vae", "model/prior=mog", "model.free_bits=0.5"], "model.free_bits needs model/prior=standard"),
        (["model/prior=mog", "model.estimator=score_function"], "score_function needs model/prior=standard"),
        (["model/prior=mog", "+model.prior.width=3"], "model.prior.width is not a setting of MixtureOfGaussiansPrior"),
        (["model/prior=vamp", "model.prior.components=0"], "model.prior.components must be"),
        (["model/prior=mog", "model.prior.init_std=0"], "starts all 10 components equal"),
        (["model/prior=vamp", "model.prior.init_mean=0"], "model.prior.init_mean must be"),
        (["model/prior=vamp", "model.posterior=full"], "model/prior=vamp with model.posterior=full"),
        (["model/prior=mog", "model.prior._target_=vaelab.priors.Nope"], "is not a prior here"),
    ],
)
def test_settings_a_prior_cannot_honour_are_refused(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_config(compose_config([*QUICK, *overrides], tmp_path))


def test_mixture_densities_keep_their_precision_for_narrow_components():
    """Trained posteriors are narrow (sigma 0.02) and far from 0: the expanded square, each of its
    terms about 1e4, must still give each component's log-density to float32 rounding."""
    torch.manual_seed(6)
    mu, log_var = torch.randn(500, 50) * 2, torch.full((500, 50), 2 * math.log(0.02))
    z = mu[:100] + 0.02 * torch.randn(100, 50)
    prior = MixtureOfGaussiansPrior(50, components=500)
    with torch.no_grad():
        prior.means.copy_(mu)
        prior.logvars.copy_(log_var)
    z64, mu64, var64 = z.double()[:, None], mu.double(), log_var.double().exp()
    exact = (-0.5 * (math.log(2 * math.pi) + var64.log() + (z64 - mu64) ** 2 / var64)).sum(-1)
    expected = torch.logsumexp(exact, -1) - math.log(500)
    torch.testing.assert_close(prior.log_prob(z).double(), expected, atol=1e-4, rtol=0)


def test_a_run_written_before_the_prior_and_flow_settings_resumes(runs, tmp_path):
    """Its checkpoint's config has no model.prior, flow_steps, flow_hidden, top_latents or top_hidden: they were the
    defaults then, so the run resumes; a changed setting is still refused."""
    import shutil

    run_dir, _ = runs["standard"]
    shutil.copytree(run_dir, tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    from vaelab.checkpoints import SETTINGS_ADDED_LATER

    for key in SETTINGS_ADDED_LATER:
        del checkpoint["vaelab"]["config"]["model"][key]
        del checkpoint["hyper_parameters"][key]
    torch.save(checkpoint, last)
    with pytest.raises(UserError, match="model.prior is"):
        train(compose_config([*QUICK, "model/prior=mog", "trainer.max_epochs=11", "ckpt_path=last"], tmp_path / "run"))
    metrics = train(compose_config([*QUICK, "trainer.max_epochs=11", "ckpt_path=last"], tmp_path / "run"))
    assert math.isfinite(metrics["test/elbo"])


def test_the_vamp_prior_is_refused_on_continuous_data(tmp_path):
    """Its pseudo-inputs live in [0, 1]: data given as real numbers as they are could lie anywhere."""
    import numpy as np

    np.save(tmp_path / "real.npy", np.random.default_rng(0).normal(size=(60, 1, 4, 4)).astype(np.float32))
    data = ["data=tensors", f"data.path={tmp_path / 'real.npy'}", "likelihood=gaussian"]
    with pytest.raises(UserError, match="pseudo-inputs are images in"):
        check_config(compose_config([*QUICK, *data, "model/prior=vamp"], tmp_path / "a"))
    check_config(compose_config([*QUICK, *data, "model/prior=mog"], tmp_path / "b"))
