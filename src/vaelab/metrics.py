"""What researchers compare, computed over a whole split: importance-sampled log-likelihood,
ELBO and its terms, KL per latent dimension, active units, reconstruction quality."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from tqdm import tqdm

from vaelab.data.in_memory import TEST_NOISE, BatchDataset, ShardedBatchSampler, Split
from vaelab.objectives import bits_per_dim
from vaelab.priors import KL_SAMPLES

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from vaelab.models.prior import CodePrior
    from vaelab.models.vae import VAE
    from vaelab.models.vqvae import VQVAE

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2016, sec. 5.2


def ssim_sigma(height: int, width: int) -> float:
    """The usual Gaussian window (sigma 1.5, 11x11), narrowed for images smaller than 11 pixels
    (such as 8x8 digits): torchmetrics sizes the window as 2 * int(3.5 sigma + 0.5) + 1."""
    side = min(height, width)
    if side >= 11:
        return 1.5
    half = (side - 1) // 2  # the widest window that fits is 2 * half + 1
    return max(half - 0.5, 0.1) / 3.5


class ReconstructionQuality:
    """MSE, PSNR and SSIM (torchmetrics) of reconstructions x_hat against x in [0, 1], accumulated
    over batches; each is the mean over images of the image's value (PSNR_i = 10 log10(1 / MSE_i)),
    as PSNR is usually reported, not the PSNR of the MSE pooled over the split."""

    def __init__(self, image_shape: Sequence[int], device: torch.device | str):
        _, height, width = image_shape
        self.psnr = PeakSignalNoiseRatio(data_range=1.0, dim=(1, 2, 3)).to(device)  # per image, then the mean
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0, sigma=ssim_sigma(height, width)).to(device)
        self.squared_error: list[Tensor] = []

    def update(self, x_hat: Tensor, x: Tensor) -> None:
        self.squared_error.append((x_hat - x).pow(2).flatten(1).mean(1))
        self.psnr.update(x_hat, x)
        self.ssim.update(x_hat, x)

    def per_example_mse(self) -> Tensor:
        return torch.cat(self.squared_error)

    def compute(self) -> dict[str, float]:
        return {
            "mse": self.per_example_mse().mean().item(),
            "psnr": self.psnr.compute().item(),
            "ssim": self.ssim.compute().item(),
        }


def model_inputs(
    split: Split, batch_size: int, dequantize: bool, device: torch.device | str, noise: int = TEST_NOISE
) -> Iterator[tuple[Tensor, Tensor]]:
    """The split's images in batches as the model sees them, with their labels: in [0, 1], or
    uniformly dequantized with the fixed noise of the ``noise`` stream for a continuous likelihood,
    as the evaluation loaders of training cut them (``vaelab.data.in_memory``)."""
    dataset = BatchDataset(split, binarize=False, dequantize=dequantize)
    for ref in ShardedBatchSampler(len(split), batch_size, shuffle=False, drop_last=False, noise=noise):
        x, y = dataset[ref]
        yield x.to(device), y.to(device)


class Progress:
    """A tqdm bar on stderr over the examples of a split: examples done / total, rate, time left
    and the running mean of a per-example value (``name``), e.g. ``nll=86.31``. Updated once per
    batch, not per sample; when off it does nothing at all (not even the ``.item()`` that would
    wait for a GPU)."""

    def __init__(self, enabled: bool, total: int, name: str, desc: str):
        self.enabled, self.name, self.sum, self.count = enabled, name, 0.0, 0
        self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True) if enabled else None

    def update(self, values: Tensor) -> None:
        if self.bar is None:
            return
        self.sum += values.double().sum().item()
        self.count += len(values)
        self.bar.set_postfix_str(f"{self.name}={self.sum / self.count:.2f}", refresh=False)
        self.bar.update(len(values))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate_split(
    model: VAE,
    split: Split,
    k: int = 5000,
    chunk: int = 500,
    batch_size: int = 100,
    seed: int = 0,
    dequantize: bool = False,
    noise: int = TEST_NOISE,
    progress: bool = False,
) -> dict:
    """Metrics of ``model`` on every example of ``split`` (already binarized if it should be).

    Returns scalars in nats per example (averaged over examples) and, under ``per_example``,
    the tensors they come from. ``nll`` is -L_k, the k-sample importance-weighted estimate of
    -log p(x); ``elbo`` averages log p(x|z) over the same k samples and subtracts the KL.
    Reproducible for a given ``seed``. ``progress`` shows a bar on stderr (``Progress``) with
    the running NLL estimate. With a learned prior (no closed-form KL) ``kl`` and ``kl_per_dim``
    are Monte-Carlo estimates from ``priors.KL_SAMPLES`` samples of q per example, and
    ``kl_estimate`` says so; with a flow posterior ``kl`` is such an estimate and ``kl_per_dim`` is
    None (a flow's marginals have no density to evaluate)."""
    model.eval()
    torch.manual_seed(seed)
    device = next(model.parameters()).device
    quality = ReconstructionQuality(split.images.shape[1:], device)
    nll, elbo, recon, kl, means, kl_dims, marginal = [], [], [], [], [], [], []
    # A conditional model of one label column is also a model of x alone, p(x) = (1/C) sum_y p(x|y)
    # with a uniform p(y): its NLL compares with an unconditional model's. The bound given each
    # example's own label is one of the C bounds, so the C passes are all the sampling it takes.
    classes = model.label_sizes[0] if model.conditional and len(model.label_sizes) == 1 else 0
    bar = Progress(progress, len(split), "nll", f"NLL k={k}")
    for x, y in model_inputs(split, batch_size, dequantize, device, noise):
        given = model.given(y)  # a conditional model's labels: its numbers are those of p(x|y)
        q = model.posterior(x, **given)
        if classes:
            each = [model.importance_sampling(x, k, chunk, y=torch.full_like(y, c)) for c in range(classes)]
            bounds, log_px = (torch.stack(parts) for parts in zip(*each))  # [C, B] each
            own = y.view(1, -1)
            bound, log_px_given_z = bounds.gather(0, own)[0], log_px.gather(0, own)[0]
            marginal.append(math.log(classes) - torch.logsumexp(bounds, 0))
        else:
            bound, log_px_given_z = model.importance_sampling(x, k, chunk, **given)
        kl_x, kl_x_per_dim = model.prior.kl(q)  # closed form, or KL_SAMPLES samples of q per example
        nll.append(-bound)
        elbo.append(log_px_given_z - kl_x)
        recon.append(-log_px_given_z)
        kl.append(kl_x)
        kl_dims.append(kl_x_per_dim)  # None for a flow posterior: its marginals have no density
        means.append(q.mu)
        quality.update(model.likelihood.mean(model.decoder_params(q.mu, **given)).clamp(0, 1), x)
        bar.update(nll[-1])
    bar.close()
    per_example = {
        name: torch.cat(values) for name, values in (("nll", nll), ("elbo", elbo), ("recon", recon), ("kl", kl))
    }
    per_example["mse"] = quality.per_example_mse()
    if marginal:
        per_example["nll_marginal"] = torch.cat(marginal)
    means = torch.cat(means)
    kl_per_dim = torch.cat(kl_dims).mean(0).tolist() if kl_dims[0] is not None else None
    activity = means.var(0)  # Cov_x(E_q[z_u]) per unit u
    dims = math.prod(split.images.shape[1:])
    offset = model.likelihood.bpd_offset_nats_per_dim
    nll_mean = per_example["nll"].mean().item()
    return {
        "num_examples": len(split),
        "k": k,
        "conditional": model.conditional,  # true: every number is of p(x|y), the model given the labels
        **(
            {
                "nll_marginal": per_example["nll_marginal"].mean().item(),
                "nll_marginal_stderr": (per_example["nll_marginal"].std() / math.sqrt(len(split))).item(),
            }
            if marginal
            else {}
        ),
        "nll": nll_mean,
        "nll_stderr": (per_example["nll"].std() / math.sqrt(len(split))).item(),
        "bpd": bits_per_dim(torch.tensor(nll_mean), dims, offset).item(),
        "elbo": per_example["elbo"].mean().item(),
        "recon": per_example["recon"].mean().item(),
        "kl": per_example["kl"].mean().item(),
        "kl_per_dim": kl_per_dim,
        "kl_estimate": "closed form"
        if model.prior.closed_form and q.gaussian
        else f"Monte Carlo, {KL_SAMPLES} samples of q",
        "active_units": int((activity > ACTIVE_UNIT_THRESHOLD).sum()),
        "latent_dim": means.shape[1],
        "unit_activity": activity.tolist(),
        **quality.compute(),
        "per_example": per_example,
        "posterior_means": means.cpu(),
    }


@torch.no_grad()
def evaluate_vq_split(
    model: VQVAE | CodePrior,
    split: Split,
    batch_size: int = 100,
    dequantize: bool = False,
    noise: int = TEST_NOISE,
    progress: bool = False,
) -> dict:
    """Metrics of a VQ-VAE, or of a VQ-VAE with its learned prior (``CodePrior``), on ``split``:
    reconstruction (nats, MSE, PSNR, SSIM), codebook health over the whole split (perplexity of
    code use and fraction of codes used, per codebook and averaged over the residual quantizer's
    stages; dead codes, counted over all of its codebooks) and the bound on -log p(x): recon plus
    the prior's NLL of the codes, or recon + log K per index of the code map for the first stage's
    uniform prior. The residual quantizer's ``recon_by_depth`` is the reconstruction decoded from
    its first 1, 2, ..., Q stages.
    ``progress`` shows a bar on stderr (``Progress``) with the running bound."""
    vq = model.vq
    model.eval()
    device = next(model.parameters()).device
    quality = ReconstructionQuality(split.images.shape[1:], device)
    # Code counts per codebook [books, K]: one book, or each stage of the residual quantizer.
    books, num_codes = math.prod(vq.quantizer.index_shape), vq.quantizer.num_codes
    counts = torch.zeros(books, num_codes, device=device)
    offsets = torch.arange(books, device=device) * num_codes
    recon, prior_nll, by_depth = [], [], []
    uniform_code_cost = math.prod(vq.code_shape) * math.log(num_codes)
    bar = Progress(progress, len(split), "nll_bound", "NLL bound")
    for x, _ in model_inputs(split, batch_size, dequantize, device, noise):
        indices = vq.encode_to_indices(x)
        params = vq.decode(vq.quantizer.lookup(indices))
        recon.append(-vq.likelihood.log_prob(x, params))
        if books > 1:
            depths = range(1, books + 1)
            by_depth.append(
                torch.stack(
                    [-vq.likelihood.log_prob(x, vq.decode(vq.quantizer.lookup(indices[..., :n]))) for n in depths]
                )
            )
        quality.update(vq.likelihood.mean(params).clamp(0, 1), x)
        flat = (indices.reshape(-1, books) + offsets).flatten()
        counts += torch.bincount(flat, minlength=books * num_codes).float().view(books, num_codes)
        nll = model.code_nll(indices)
        learned = nll is not None
        prior_nll.append(nll if nll is not None else torch.full_like(recon[-1], uniform_code_cost))
        bar.update(recon[-1] + prior_nll[-1])
    bar.close()
    recon = torch.cat(recon)
    probs = counts / counts.sum(1, keepdim=True)
    code_cost = torch.cat(prior_nll)
    nll_bound = recon + code_cost
    dims = math.prod(split.images.shape[1:])
    results = {
        "num_examples": len(split),
        "nll_bound": nll_bound.mean().item(),
        "nll_bound_stderr": (nll_bound.std() / math.sqrt(len(split))).item(),
        "bpd": bits_per_dim(nll_bound.mean(), dims, vq.likelihood.bpd_offset_nats_per_dim).item(),
        "recon": recon.mean().item(),
        "prior": "learned" if learned else "uniform",
        "prior_nll": code_cost.mean().item(),
        **quality.compute(),
        "perplexity": torch.exp(-(probs * torch.log(probs + 1e-10)).sum(1)).mean().item(),  # mean over books
        "codes_used": (counts > 0).float().mean().item(),
        "dead_codes": vq.quantizer.dead_codes(),
        "num_codes": vq.quantizer.num_codes,
        "codebooks": books,
    }
    if by_depth:
        results["recon_by_depth"] = torch.cat(by_depth, 1).mean(1).tolist()
    return results
