"""The conditional VAE (model=cvae): its bound against torch.distributions, its importance-sampled
log p(x|y) against the exact one of a linear-Gaussian model, a run whose samples follow their
labels and whose bound needs the right ones, eval.py's pictures, refusals and resume."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import distributions as D

from vaelab.building import instantiate_plain
from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
from vaelab.config import compose_config
from vaelab.data import Split
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.metrics import evaluate_split
from vaelab.models import CVAE
from vaelab.training import train

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
MLP = {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}


def test_the_bound_is_that_of_a_vae_whose_networks_read_the_one_hot_labels():
    torch.manual_seed(0)
    model = CVAE([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, label_sizes=[3, 2])
    x, y = torch.rand(5, 1, 4, 4).round(), torch.stack([torch.randint(3, (5,)), torch.randint(2, (5,))], 1)
    c = torch.cat([F.one_hot(y[:, 0], 3), F.one_hot(y[:, 1], 2)], 1).float()
    assert torch.equal(model.condition(y), c)
    params = model.encoder(x) + c @ model.label_head.weight.T  # the encoder's head also reads c(y)
    mu, log_var = params.chunk(2, -1)
    terms = model.terms(x, y=y)
    z = terms["z"]
    logits = model.decoder(torch.cat([z, c], -1))  # p(x|z, y): the decoder reads [z, c(y)]
    log_px = D.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    kl = D.kl_divergence(D.Normal(mu, (0.5 * log_var).exp()), D.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(terms["log_px_given_z"], log_px, atol=1e-5)
    assert torch.allclose(terms["kl"], kl, atol=1e-5)
    assert torch.allclose(model.posterior(x, y).mu, mu)
    with pytest.raises(UserError, match="pass the labels"):
        model.posterior(x)


def test_importance_sampling_converges_to_the_exact_conditional_likelihood():
    """p(z) = N(0, I), p(x|z, y) = N(x; z + b_y, S^2 I): log p(x|y) = log N(x; b_y, (1 + S^2) I)."""
    torch.manual_seed(1)
    latent, sigma = 2, 0.5
    model = CVAE(
        [1, 1, latent], latent, MLP, {"name": "gaussian", "sigma": sigma, "learn_sigma": "none"}, ADAM, label_sizes=[3]
    )
    offsets = torch.tensor([[2.0, -1.0], [0.0, 0.0], [-3.0, 1.5]])  # b_y
    decoder = torch.nn.Linear(latent + 3, latent, bias=False)
    decoder.weight.data = torch.cat([torch.eye(latent), offsets.T], 1)
    model.decoder = torch.nn.Sequential(decoder, torch.nn.Unflatten(-1, (1, 1, latent)))
    # q(z|x, y) near the exact posterior N((x - b_y) / (1 + S^2), S^2 / (1 + S^2)), its spread 1.3 times too wide.
    encoder = torch.nn.Linear(latent, 2 * latent)
    encoder.weight.data = torch.cat([torch.eye(latent) / (1 + sigma**2), torch.zeros(latent, latent)])
    encoder.bias.data = torch.cat(
        [torch.zeros(latent), torch.full((latent,), math.log(1.3**2 * sigma**2 / (1 + sigma**2)))]
    )
    model.encoder = torch.nn.Sequential(torch.nn.Flatten(), encoder)
    model.label_head.weight.data = torch.cat([-offsets.T / (1 + sigma**2), torch.zeros(latent, 3)])
    y = torch.randint(3, (60,))
    x = (offsets[y] + math.sqrt(1 + sigma**2) * torch.randn(60, latent)).view(60, 1, 1, latent)
    exact = D.Normal(offsets[y], math.sqrt(1 + sigma**2)).log_prob(x.flatten(1)).sum(-1)
    results = evaluate_split(model, Split(x, y, None), k=4000, chunk=1000, batch_size=30)
    assert results["conditional"] is True
    assert results["nll"] == pytest.approx(-exact.mean().item(), abs=0.03)
    # As a model of x alone: p(x) = (1/3) sum_y N(x; b_y, (1 + S^2) I), a mixture.
    each = D.Normal(offsets[:, None], math.sqrt(1 + sigma**2)).log_prob(x.flatten(1)[None]).sum(-1)  # [3, 60]
    mixture = torch.logsumexp(each, 0) - math.log(3)
    assert results["nll_marginal"] == pytest.approx(-mixture.mean().item(), abs=0.03)
    assert results["nll_marginal"] > results["nll"]  # the labels tell something about x
    wrong = evaluate_split(model, Split(x, (y + 1) % 3, None), k=4000, chunk=1000, batch_size=30)
    assert wrong["nll"] > results["nll"] + 1  # the estimate is of p(x|y) for the labels it is given


QUICK = ["trainer.enable_progress_bar=false", "model=cvae", "size=small"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cvae")
    overrides = [*QUICK, "size.latent_dim=4", "trainer.max_epochs=20", "model.test_k=10"]
    metrics = train(compose_config(overrides, folder / "run"))
    return folder, metrics


def test_a_trained_cvae_needs_its_labels_and_draws_each_class_it_is_asked_for(run):
    folder, metrics = run
    saved = json.loads((folder / "run" / "test_metrics.json").read_text())
    assert saved["test/elbo"] == pytest.approx(metrics["test/elbo"])
    assert yaml.safe_load((folder / "run" / "config.yaml").read_text())["model"]["label_sizes"] == [
        10
    ]  # read from the data
    model = model_from_checkpoint(load_checkpoint(str(folder / "run" / "checkpoints" / "best.ckpt"))).eval()
    assert model.label_sizes == [10]
    assert metrics["test/iwae_bound"] >= metrics["test/elbo"]  # model.test_k's bound, given the labels too
    datamodule = instantiate_plain(compose_config(QUICK, folder / "data").data)
    datamodule.prepare()
    test = datamodule.splits["test"]  # images the model did not train on
    x, y = test.unit(len(test)), test.labels
    with torch.no_grad():
        right = model.iwae_bound(x, 50, y=y).mean()
        wrong = model.iwae_bound(x, 50, y=(y + 1) % 10).mean()
    assert right > wrong + 5  # the decoder uses the label: the wrong one costs nats (measured: 11.9)
    # Samples asked for class v look more like the mean image of v than of any other digit.
    means = torch.stack([x[y == v].mean(0) for v in range(10)])
    hits = 0
    for v in range(10):
        samples = model.sample(16, torch.Generator().manual_seed(v), y=torch.full((16,), v))
        nearest = torch.cdist(samples.flatten(1), means.flatten(1)).argmin(1)
        hits += int((nearest == v).float().mean() >= 0.5)
    assert hits >= 9  # measured: every class, 69-100% of its samples (an untrained decoder: about 1 in 10)


def test_eval_reports_the_conditional_likelihood_and_draws_the_label_pictures(run, tmp_path, capsys):
    folder, metrics = run
    cfg = compose_config(
        [f"ckpt_path={folder}/run/checkpoints/best.ckpt", "k=200"], tmp_path / "eval", config_name="eval"
    )
    results = evaluate_checkpoint(cfg)
    assert "of p(x|y), given the labels" in capsys.readouterr().out
    assert results["nll"] <= -results["elbo"] and abs(results["elbo"] - metrics["test/elbo"]) < 1.0
    images = tmp_path / "eval" / "images"
    for name in ("samples", "samples_by_class", "reconstructions", "label_swaps"):
        assert (images / f"{name}.png").is_file()
    from PIL import Image

    by_class = Image.open(images / "samples_by_class.png")
    cell = by_class.height // 10  # ten rows, one per digit, of eight samples each
    assert by_class.width == pytest.approx(8 * cell, abs=8)


def test_a_resumed_cvae_run_keeps_its_labels(run, tmp_path):
    folder, _ = run
    import shutil

    shutil.copytree(folder / "run", tmp_path / "run")
    overrides = [*QUICK, "size.latent_dim=4", "model.test_k=10", "trainer.max_epochs=21", "ckpt_path=last"]
    metrics = train(compose_config(overrides, tmp_path / "run"))
    assert math.isfinite(metrics["test/elbo"])
    checkpoint = load_checkpoint(str(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    assert checkpoint["epoch"] == 20 and checkpoint["hyper_parameters"]["label_sizes"] == [10]


def test_data_without_labels_and_sizes_that_miss_labels_are_refused_before_training(tmp_path):
    np.savez(
        tmp_path / "unlabelled.npz", images=np.random.default_rng(0).integers(0, 2, (60, 1, 4, 4)).astype(np.uint8)
    )
    data = ["data=tensors", f"data.path={tmp_path / 'unlabelled.npz'}", "data.batch_size=16"]
    cfg = compose_config([*QUICK, *data], tmp_path / "a")
    with pytest.raises(UserError, match="model=cvae is conditioned on labels, and data=tensors has none"):
        train(cfg)
    assert not (tmp_path / "a" / "config.yaml").exists()  # refused before the run folder was written
    with pytest.raises(UserError, match=r"model.label_sizes=\[5\] does not cover the data's labels, which need \[10\]"):
        train(compose_config([*QUICK, "model.label_sizes=[5]"], tmp_path / "b"))
    from vaelab.config import check_config

    for overrides, message in (
        (["callbacks=[default,disentanglement]", "data=dsprites_small"], "model=cvae's q"),
        (["callbacks.encoder_gradient_variance.num_draws=5"], "model=cvae's is given"),
    ):
        with pytest.raises(UserError, match=message):
            check_config(compose_config([*QUICK, *overrides], tmp_path / "c"))
