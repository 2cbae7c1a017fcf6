"""Pictures of a trained model: samples, reconstructions, interpolations, latent traversals,
the posterior map of a data set and, for 2-D latents, the decoded manifold. Each function
returns image grids ([3, H, W] in [0, 1]) or writes a PNG, and draws nothing at random
except from the generator it is given."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchvision.utils import make_grid

if TYPE_CHECKING:
    from vaelab.models.base import GenerativeModel
    from vaelab.models.cvae import CVAE
    from vaelab.models.vae import VAE

MIN_SIDE = 64  # pixels: the shorter side of every image in a grid is scaled up to at least this


def upscale_factor(height: int, width: int) -> int:
    """The whole number by which a grid enlarges images of this size: the smallest that makes
    the shorter side at least ``MIN_SIDE`` pixels (28x28 -> 3, 84 pixels; 8x8 -> 8, 64 pixels;
    32x32 -> 2; 64x64 and larger -> 1, unchanged)."""
    return max(1, math.ceil(MIN_SIDE / min(height, width)))


def grid(images: Tensor, nrow: int) -> Tensor:
    """Images ([N, C, H, W] in [0, 1]) tiled by torchvision's ``make_grid``, ``nrow`` to a row,
    with 2 grey pixels between them. Small images are first enlarged by ``upscale_factor``
    (nearest neighbour: each pixel becomes a constant square block, so pixels stay sharp), so a
    row of 8 is at least 8 * (64 + 2) + 2 = 530 pixels wide, readable in W&B and in the run
    folder; a row of 8 28x28 images is 690. Every image grid (the training callback's and
    ``eval.py``'s) goes through here."""
    images = images.float().clamp(0, 1).cpu()
    factor = upscale_factor(*images.shape[-2:])
    images = images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return make_grid(images, nrow=nrow, pad_value=0.5)


@torch.no_grad()
def decode(model: VAE, z: Tensor, y: Tensor | None = None) -> Tensor:
    return model.decode(z.to(model.device), y)


@torch.no_grad()
def samples(model: GenerativeModel, num: int = 64, seed: int = 0) -> Tensor:
    return grid(model.sample(num, generator=torch.Generator().manual_seed(seed)), nrow=8)


@torch.no_grad()
def reconstructions(model: GenerativeModel, x: Tensor, y: Tensor | None = None) -> Tensor:
    """Each input beside its reconstruction (at the posterior mean; given its labels ``y``, for a
    conditional model)."""
    x = x.to(model.device)
    recon = model.reconstruct(x) if y is None else model.reconstruct(x, y.to(model.device))
    pairs = torch.stack([x, recon], dim=1).flatten(0, 1)
    return grid(pairs, nrow=8)


@torch.no_grad()
def pseudo_inputs(model: VAE, num: int = 32) -> Tensor:
    """The VampPrior's first ``num`` pseudo-inputs u_k, each beside its decoding at the mean of
    q(z|u_k): the prior's components as images."""
    u = model.prior.pseudo_inputs[:num]
    return reconstructions(model, u)


@torch.no_grad()
def samples_by_class(model: CVAE, per_class: int = 8, seed: int = 0) -> Tensor:
    """A conditional model's samples, one row per value of its label (the first label column
    with more than one value), the same prior draws z in every column: what the label alone
    changes."""
    generator = torch.Generator().manual_seed(seed)
    z = model.prior.sample(per_class, generator).to(model.device)
    base = model.cycled_labels(per_class) * 0  # the other label columns at their first value
    rows = [decode(model, z, model.with_label(base, value)) for value in range(model.varied_size())]
    return grid(torch.cat(rows), nrow=per_class)


@torch.no_grad()
def label_swaps(model: CVAE, x: Tensor, y: Tensor) -> Tensor:
    """One row per image: the image, then its posterior mean z = mu(x, y) decoded with each value
    of the label in turn (its own included): the style z keeps, under another label."""
    x, y = x.to(model.device), y.to(model.device)
    z = model.posterior(x, y).mu
    swapped = [decode(model, z, model.with_label(y, value)) for value in range(model.varied_size())]
    return grid(torch.stack([x, *swapped], 1).flatten(0, 1), nrow=1 + len(swapped))


def slerp(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Spherical interpolation between rows of a and b ([N, L]) at fractions t ([T]); [N, T, L]."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((a_n * b_n).sum(-1).clamp(-1 + 1e-7, 1 - 1e-7))[:, None, None]
    t = t[None, :, None]
    return (torch.sin((1 - t) * omega) * a[:, None] + torch.sin(t * omega) * b[:, None]) / torch.sin(omega)


@torch.no_grad()
def interpolations(model: VAE, x_a: Tensor, x_b: Tensor, steps: int = 10, spherical: bool = False) -> Tensor:
    """One row per pair (x_a[i], x_b[i]): decoded points between their posterior means."""
    mu_a, mu_b = model.posterior(x_a.to(model.device)).mu, model.posterior(x_b.to(model.device)).mu
    t = torch.linspace(0, 1, steps, device=mu_a.device)
    if spherical:
        z = slerp(mu_a, mu_b, t)
    else:
        z = mu_a[:, None] + t[None, :, None] * (mu_b - mu_a)[:, None]
    return grid(decode(model, z.flatten(0, 1)), nrow=steps)


def traversal_order(kl_per_dim: list[float], num_dims: int) -> Tensor:
    """The latents a traversal shows, one per row: the ``num_dims`` with the highest KL, highest
    first (``traversals`` draws them, ``factor_labels`` names them)."""
    return torch.tensor(kl_per_dim).argsort(descending=True)[:num_dims]


@torch.no_grad()
def traversals(
    model: VAE, x: Tensor, kl_per_dim: list[float], num_dims: int = 10, steps: int = 11, limit: float = 3.0
) -> Tensor:
    """Rows: the ``num_dims`` latents with the highest KL (most informative first), each swept
    from -limit to limit while the others stay at the posterior mean of ``x`` (one image)."""
    order = traversal_order(kl_per_dim, num_dims)
    base = model.posterior(x[:1].to(model.device)).mu[0]
    values = torch.linspace(-limit, limit, steps, device=base.device)
    z = base.repeat(len(order), steps, 1)
    for row, dim in enumerate(order.tolist()):
        z[row, :, dim] = values
    return grid(decode(model, z.flatten(0, 1)), nrow=steps)


def factor_labels(
    kl_per_dim: list[float], information: Tensor, factor_names: list[str], factor_sizes: list[int], num_dims: int = 10
) -> list[str]:
    """One label per row of ``traversals`` (latents by decreasing KL): the latent, its KL, and the
    factor it tells most about with that information as a share of the factor's entropy
    (I(z; v) / H(v), H(v) = log of the factor's number of values), or "none" below 0.1; a latent
    with KL below 0.01 nats is "inactive" (its mean may still follow a factor, but the decoder
    cannot use what q(z|x) does not carry beyond the prior).
    ``information``: I(z_i; v_j) in nats [L, F] (``vaelab.disentanglement.mutual_information``)."""
    entropy = torch.tensor([math.log(n) if n > 1 else math.inf for n in factor_sizes])
    share = information / entropy  # [L, F]
    labels = []
    for dim in traversal_order(kl_per_dim, num_dims).tolist():
        best = int(share[dim].argmax())
        tracked = f"{factor_names[best]} ({share[dim, best]:.2f})" if share[dim, best] >= 0.1 else "none"
        if kl_per_dim[dim] < 0.01:
            tracked = "inactive"
        labels.append(f"z{dim}  KL {kl_per_dim[dim]:.2f}  {tracked}")
    return labels


def save_labelled_rows(image: Tensor, labels: list[str], path: Path) -> None:
    """A grid image [C, H, W] whose rows are ``labels`` (top to bottom), saved with the labels
    written left of the rows."""
    height, width = image.shape[1:]
    fig, ax = plt.subplots(figsize=(3 + width / 100, height / 100 + 0.3), dpi=100)
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy(), interpolation="nearest")
    ax.set_yticks([(row + 0.5) * height / len(labels) for row in range(len(labels))], labels, fontsize=9)
    ax.set_xticks([])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@torch.no_grad()
def manifold(model: VAE, steps: int = 15) -> Tensor:
    """For a 2-D latent: images decoded on a grid of the prior's quantiles of each dimension (AEVB
    paper, fig. 4): N(0, 1)'s exactly, a learned prior's from 100,000 of its samples."""
    u = torch.linspace(0.5 / steps, 1 - 0.5 / steps, steps)
    if model.prior.closed_form:
        q1 = q2 = torch.distributions.Normal(0, 1).icdf(u)
    else:
        draws = model.prior.sample(100_000, torch.Generator().manual_seed(0)).cpu()
        q1, q2 = torch.quantile(draws[:, 0], u), torch.quantile(draws[:, 1], u)
    rows, columns = torch.meshgrid(q2.flip(0), q1, indexing="ij")  # z_2 falls down the rows, z_1 rises along them
    return grid(decode(model, torch.stack([columns, rows], -1).flatten(0, 1)), nrow=steps)


def latent_map(means: Tensor, labels: Tensor, path: Path) -> None:
    """Scatter of posterior means coloured by label (by the first column of [N, F] labels); the
    first two principal components when the latent is not 2-D."""
    z = means.float()
    if z.shape[1] != 2:
        centred = z - z.mean(0)
        _, s, v = torch.linalg.svd(centred, full_matrices=False)
        z = centred @ v[:2].T
        explained = (s[:2] ** 2 / (s**2).sum()).tolist()
        xlabel, ylabel = (f"PC{i + 1} ({explained[i]:.0%} of variance)" for i in range(2))
    else:
        xlabel, ylabel = "z1", "z2"
    fig, ax = plt.subplots(figsize=(6, 5))
    if labels.ndim == 2:  # several factors per example (dSprites): coloured by the first (the shape)
        labels = labels[:, 0]
    labelled = labels >= 0
    if labelled.any():
        points = ax.scatter(z[labelled, 0], z[labelled, 1], c=labels[labelled], cmap="tab10", s=4, alpha=0.7)
        fig.colorbar(points, ax=ax, label="label")
    if (~labelled).any():
        ax.scatter(z[~labelled, 0], z[~labelled, 1], c="grey", s=4, alpha=0.5)
    title = "posterior means of the evaluation split"
    if not labelled.any():  # e.g. fixed-binarized MNIST, which is published without labels
        title += " (the data set has no labels)"
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
