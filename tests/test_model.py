"""Networks and the VAE LightningModule's math, without a Trainer."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from vaelab.models import VAE
from vaelab.nets import build_networks

MLP = {"kind": "mlp", "hidden_dims": [32, 32], "activation": "tanh"}
CONV = {"kind": "conv", "channels": [8, 16], "activation": "relu"}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}


def make_vae(net=MLP, image_shape=(1, 8, 8), latent_dim=4, likelihood=None, beta=1.0):
    return VAE(list(image_shape), latent_dim, net, likelihood or {"name": "bernoulli"}, ADAM, beta=beta)


@pytest.mark.parametrize("net", [MLP, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("image_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 7, 9)])
def test_decoder_output_matches_the_image_shape(net, image_shape):
    encoder, decoder = build_networks(net, image_shape, latent_dim=6)
    assert encoder(torch.rand(2, *image_shape)).shape == (2, 12)  # mu and logvar of a diagonal Gaussian
    assert decoder(torch.randn(2, 6)).shape == (2, *image_shape)
    assert decoder(torch.randn(3, 2, 6)).shape == (3, 2, *image_shape)  # extra sample dimension


BETAVAE_CONV = yaml.safe_load((Path(__file__).resolve().parents[1] / "conf" / "net" / "betavae_conv.yaml").read_text())


def betavae_conv_parameters(channels_in: int, flat: int, latent: int) -> tuple[int, int]:
    """By hand: four 4x4 convolutions (weights c_in * c_out * 16, biases c_out), 32 channels,
    then 256 units and the head to mu and logvar; the decoder mirrors it."""
    convs = (channels_in * 32 * 16 + 32) + 3 * (32 * 32 * 16 + 32)
    encoder = convs + (flat * 256 + 256) + (256 * 2 * latent + 2 * latent)
    deconvs = 3 * (32 * 32 * 16 + 32) + (32 * channels_in * 16 + channels_in)
    decoder = (latent * 256 + 256) + (256 * flat + flat) + deconvs
    return encoder, decoder


@pytest.mark.parametrize(
    "image_shape, flat, counts",
    [
        ((1, 64, 64), 32 * 4 * 4, (186_260, 184_161)),  # the papers' dSprites network: 370,421 parameters
        ((3, 64, 64), 32 * 4 * 4, (187_284, 185_187)),
        ((1, 32, 32), 32 * 2 * 2, (87_956, 85_473)),  # the same layers; the flattened map is 2x2
    ],
)
def test_the_beta_vae_papers_conv_net_has_its_parameter_count_and_round_trips(image_shape, flat, counts):
    assert BETAVAE_CONV == {"kind": "conv", "channels": [32] * 4, "kernel": 4, "dense": [256], "activation": "relu"}
    encoder, decoder = build_networks(BETAVAE_CONV, image_shape, latent_dim=10)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (n_params(encoder), n_params(decoder)) == betavae_conv_parameters(image_shape[0], flat, 10) == counts
    kernels = [m.kernel_size for m in encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert kernels == [(4, 4)] * 4
    x = torch.rand(2, *image_shape)
    features = encoder.net[:8](x)  # after the four convolutions, before flattening
    assert features.shape == (2, 32, image_shape[1] // 16, image_shape[2] // 16)
    assert encoder(x).shape == (2, 20)
    assert decoder(torch.randn(2, 10)).shape == (2, *image_shape)
    assert decoder(torch.randn(3, 2, 10)).shape == (3, 2, *image_shape)
    # Every size retraced: the decoder's feature maps are the encoder's in reverse, then the image.
    with torch.no_grad():
        down = [tuple(h.shape[-2:]) for h in _feature_maps(encoder.net, x)]
        start = decoder.fc(torch.randn(2, 10)).view(-1, *decoder.start_shape)
        up = [tuple(h.shape[-2:]) for h in _feature_maps(decoder.net, start)]
    assert up == [*down[::-1][1:], tuple(image_shape[1:])]


def _feature_maps(net, h):
    """The output of each convolution (plain or transposed) of ``net``."""
    maps = []
    for layer in net:
        h = layer(h)
        if isinstance(layer, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            maps.append(h)
    return maps


@pytest.mark.parametrize("net", [MLP, CONV], ids=["mlp", "conv"])
def test_reconstruction_gradient_reaches_the_encoder_through_the_sample(net):
    vae = make_vae(net)
    x = torch.bernoulli(torch.full((16, 1, 8, 8), 0.4))
    terms = vae.terms(x)
    # Only the reconstruction term: its gradient reaches the encoder through z = mu + sigma * eps.
    (-terms["log_px_given_z"].mean()).backward()
    for p in vae.encoder.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_loss_is_negative_elbo_at_beta_one_and_weights_kl_otherwise():
    x = torch.bernoulli(torch.full((8, 1, 8, 8), 0.4))
    for beta in (1.0, 4.0):
        torch.manual_seed(0)
        out = make_vae(beta=beta).objective(x)
        expected = (-out["log_px_given_z"] + beta * out["kl"]).mean()
        torch.testing.assert_close(out["loss"], expected)
        torch.testing.assert_close(out["elbo"], out["log_px_given_z"] - out["kl"])


class Fixed(torch.nn.Module):
    """Stands in for a network: returns ``fn(input)``."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_elbo_is_below_log_likelihood_on_a_model_with_known_marginal():
    """Decoder p(x|z) = N(x; z, s^2 I), prior N(0, I): then p(x) = N(x; 0, (1 + s^2) I) exactly,
    and the ELBO, for any posterior, is at most log p(x); equal at the true posterior."""
    s = 0.5
    vae = make_vae(
        {"kind": "mlp", "hidden_dims": [4], "activation": "tanh"},
        image_shape=(1, 1, 2),
        latent_dim=2,
        likelihood={"name": "gaussian", "sigma": s, "learn_sigma": "none"},
    )
    vae.decoder = Fixed(lambda z: z.unflatten(-1, (1, 1, 2)))
    x = torch.randn(4000, 1, 1, 2)
    exact = torch.distributions.Normal(0, math.sqrt(1 + s**2)).log_prob(x).flatten(1).sum(-1)
    # The true posterior is N(x / (1 + s^2), s^2 / (1 + s^2)).
    mu = x.flatten(1) / (1 + s**2)
    logvar = torch.full_like(mu, math.log(s**2 / (1 + s**2)))
    vae.encoder = Fixed(lambda _: torch.cat([mu, logvar], -1))
    # At the true posterior log p(x|z) + log p(z) - log q(z|x) = log p(x) for every z ...
    q = vae.posterior(x)
    z = q.rsample()
    log_w = vae.likelihood.log_prob(x, vae.decoder(z)) + vae.prior.log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(log_w, exact, atol=1e-4, rtol=0)
    # ... so the ELBO (analytic KL, one sample) equals log p(x) up to Monte Carlo error.
    assert abs(vae.terms(x)["elbo"].mean() - exact.mean()) < 0.1
    vae.encoder = Fixed(lambda _: torch.cat([mu * 0.5, logvar + 1.0], -1))  # a worse posterior
    gap = exact - vae.terms(x)["elbo"]
    assert gap.mean() > 0.3  # single-sample estimates scatter; their mean is bounded


def test_sample_and_reconstruct_are_images_in_range():
    vae = make_vae(CONV).eval()
    x = torch.rand(4, 1, 8, 8)
    for images in (vae.reconstruct(x), vae.sample(5, generator=torch.Generator().manual_seed(0))):
        assert images.shape[1:] == (1, 8, 8) and images.min() >= 0 and images.max() <= 1
    a = vae.sample(3, generator=torch.Generator().manual_seed(1))
    b = vae.sample(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_training_learns_structured_data():
    torch.manual_seed(0)
    vae = make_vae()
    prototypes = torch.bernoulli(torch.full((4, 1, 8, 8), 0.5))
    x = prototypes[torch.arange(64) % 4]
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    first = vae.objective(x)["loss"].item()
    for _ in range(300):
        loss = vae.objective(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Four equally likely images need log 4 = 1.4 nats; random guessing costs 64 log 2 = 44 nats.
    assert first > 40 and loss.item() < 10
