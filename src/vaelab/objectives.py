"""Training objectives. The losses take per-example terms ([B]) and return scalars averaged over
the batch, in nats per example (summed over data dimensions), the literature's convention; the
beta-TCVAE's estimators at the end return per-example terms."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def elbo(log_px_given_z: Tensor, kl: Tensor) -> Tensor:
    """ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), per example [B] (one-sample estimate of
    the first term, closed form for the second; AEVB eq. 7)."""
    return log_px_given_z - kl


def beta_vae_loss(log_px_given_z: Tensor, kl: Tensor, beta: float) -> Tensor:
    """-E_q[log p(x|z)] + beta * KL, averaged over the batch; beta = 1 is the negative ELBO."""
    return (-log_px_given_z + beta * kl).mean()


def iwae_bound(log_w: Tensor) -> Tensor:
    """L_k = log (1/k) sum_k w_k from log-weights [k, B], with logsumexp; [B] (IWAE eq. 8).
    k = 1 is the single-sample ELBO; L_k rises with k towards log p(x)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def bits_per_dim(nats: Tensor, num_dims: int, offset_nats_per_dim: float = 0.0) -> Tensor:
    """Convert a negative log-likelihood in nats per example to bits per dimension.

    ``offset_nats_per_dim`` is log(256) for a continuous density on [0, 1]-scaled 8-bit data,
    turning it into the density on the 0..255 grid that papers report; 0 for discrete data.
    """
    return (nats / num_dims + offset_nats_per_dim) / math.log(2)


# ---- the KL's decomposition (beta-TCVAE) ---------------------------------------------------
# Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", eq. 2: with n the index of an
# example among the N of the training set, q(z) = (1/N) sum_n q(z|n) the aggregate posterior and
# q(z_d) its marginals,
#     E_p(n)[KL(q(z|n) || p(z))] = MI + TC + dwKL,
#     MI   = E_q(z,n)[log q(z|n) - log q(z)]                (index-code mutual information)
#     TC   = E_q(z)[log q(z) - log prod_d q(z_d)]           (total correlation)
#     dwKL = E_q(z)[log prod_d q(z_d) - log p(z)]           (dimension-wise KL)
# q(z) is a sum over the whole training set; the functions below estimate it from one minibatch of
# B examples, each with one sample z_i ~ q(z|x_i).


def log_density_matrix(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log q(z_id | x_j) for every sample i, every posterior j of the batch and every latent
    dimension d: [B, B, L] (i, j, d), from samples ``z`` [B, L] and the diagonal Gaussian
    posteriors' ``mu``, ``logvar`` [B, L]. Row i's diagonal entry is the sample's own posterior."""
    z, mu, logvar = z.unsqueeze(1), mu.unsqueeze(0), logvar.unsqueeze(0)
    return -0.5 * (math.log(2 * math.pi) + logvar + (z - mu) ** 2 * torch.exp(-logvar))


def mss_log_weights(batch_size: int, dataset_size: int, device: torch.device | str | None = None) -> Tensor:
    """log w_ij [B, B] of minibatch stratified sampling (Chen et al. 2018, appendix C.2), with
    M = B - 1 examples besides the sample's own:

        q(z_i) ~ (1/N) q(z_i|x_i) + (1/M) sum_{j in B-2 others} q(z_i|x_j) + (N - M)/(N M) q(z_i|x_k)

    with k = i + 1 (mod B) the one other example of the stratum of weight (N - M)/(N M). Each row
    sums to 1, so q(z) of N equal posteriors is estimated exactly. (The reference code's matrix,
    rtqichen/beta-tcvae, puts these weights in columns 0 and 1 of every row instead of on and next
    to the diagonal: its pull request #1.) B = 1 leaves the sample's own term, weight 1/N."""
    n, m = dataset_size, batch_size - 1
    if m > n:
        raise ValueError(
            f"minibatch stratified sampling needs a batch of at most N + 1 = {n + 1} examples, got {batch_size}"
        )
    if m == 0:
        return torch.full((1, 1), -math.log(n), device=device)
    weights = torch.full((batch_size, batch_size), 1.0 / m, device=device, dtype=torch.float64)
    rows = torch.arange(batch_size, device=device)
    weights[rows, (rows + 1) % batch_size] = (n - m) / (n * m)
    weights[rows, rows] = 1.0 / n
    return weights.log().float()


def aggregate_posterior_log_densities(log_q: Tensor, dataset_size: int, sampling: str = "mws") -> tuple[Tensor, Tensor]:
    """Minibatch estimates of log q(z_i) and log prod_d q(z_id), each [B], from the matrix
    ``log_q`` [B, B, L] of ``log_density_matrix`` and the training set's size N.

    ``mws``, minibatch-weighted sampling (Chen et al. 2018, eq. 5), with M = B the batch size:

        log q(z_i)     ~ logsumexp_j sum_d log q(z_id|x_j) - log(N M)
        log q(z_id)    ~ logsumexp_j log q(z_id|x_j) - log(N M),  summed over d for the product

    The weight 1/(N M) of each term is p(B_M) / r(B_M | n) / M, the paper's importance weight,
    and makes a lower bound on E log q(z). The weights sum to 1/N, not 1: the estimate is the log
    of the batch mean (1/M) sum_j q(z_i|x_j) less log N, for q(z) and for each marginal alike. A
    constant, so the gradients are those of the batch mean; but the terms are shifted by constants,
    MI by +log N, TC by +(L - 1) log N and dwKL by -L log N (with N = 737,280 and L = 10, TC by
    +122 nats), and so is the loss unless alpha = beta = gamma.

    ``mss``, minibatch stratified sampling: the weights of ``mss_log_weights`` in place of
    1/(N M). They sum to 1, so the terms are estimates of the terms themselves, with no shift;
    it needs B <= N + 1.

    Under DDP each process passes its own share of the global batch (M = B / processes): the
    estimate of log q(z) uses only the process's own minibatch, N is the whole training set."""
    if sampling == "mws":
        log_norm = math.log(dataset_size * log_q.shape[0])
        log_qz = torch.logsumexp(log_q.sum(-1), dim=1) - log_norm
        log_prod_qzd = (torch.logsumexp(log_q, dim=1) - log_norm).sum(-1)
    elif sampling == "mss":
        log_w = mss_log_weights(log_q.shape[0], dataset_size, log_q.device)
        log_qz = torch.logsumexp(log_w + log_q.sum(-1), dim=1)
        log_prod_qzd = torch.logsumexp(log_w.unsqueeze(-1) + log_q, dim=1).sum(-1)
    else:
        raise ValueError(f"sampling must be mws or mss, got {sampling!r}")
    return log_qz, log_prod_qzd


def kl_decomposition(log_qz_given_x: Tensor, log_qz: Tensor, log_prod_qzd: Tensor, log_pz: Tensor) -> dict[str, Tensor]:
    """Per example [B], at the sample z_i ~ q(z|x_i): mi = log q(z|x) - log q(z),
    tc = log q(z) - log prod_d q(z_d), dwkl = log prod_d q(z_d) - log p(z). Whatever the estimates
    of log q(z) and log prod_d q(z_d), the three add up to log q(z|x) - log p(z), the one-sample
    estimate of KL(q(z|x) || p(z))."""
    return {"mi": log_qz_given_x - log_qz, "tc": log_qz - log_prod_qzd, "dwkl": log_prod_qzd - log_pz}


def rbf_kernel(a: Tensor, b: Tensor, scale: float) -> Tensor:
    """k(a_i, b_j) = exp(-||a_i - b_j||^2 / C) for a [n, d], b [m, d]; [n, m] (WAE, Tolstikhin et al. 2018)."""
    return torch.exp(-torch.cdist(a, b).square() / scale)


def imq_kernel(a: Tensor, b: Tensor, scale: float) -> Tensor:
    """The inverse multiquadratic k(a_i, b_j) = C / (C + ||a_i - b_j||^2); [n, m] (WAE, section 4)."""
    return scale / (scale + torch.cdist(a, b).square())


KERNELS = {"rbf": rbf_kernel, "imq": imq_kernel}


def mmd_unbiased(x: Tensor, y: Tensor, kernel: str = "imq", scale: float = 1.0) -> Tensor:
    """The unbiased estimate of MMD^2 between the samples x [n, d] and y [m, d] (Gretton et al.
    2012, eq. 3): the means of k over the pairs i != j within x and within y, minus twice the mean
    over all pairs across. Its expectation is 0 when both come from one distribution (it can be
    negative); a scalar."""
    k = KERNELS[kernel]
    kxx, kyy, kxy = k(x, x, scale), k(y, y, scale), k(x, y, scale)
    n, m = len(x), len(y)
    within_x = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    within_y = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within_x + within_y - 2 * kxy.mean()


def dip_covariance(mu: Tensor, covariance: Tensor | None = None) -> Tensor:
    """The covariance DIP-VAE matches to the identity (Kumar et al. 2018), [L, L], from the batch:
    Cov_p(x)[mu(x)] of the posterior means mu [B, L] (DIP-VAE-I, eq. 6), or with the posteriors'
    covariances Sigma(x) [B, L, L] the covariance of the aggregate posterior,
    Cov_q(z)[z] = E_p(x)[Sigma(x)] + Cov_p(x)[mu(x)] (DIP-VAE-II, eq. 7). Means over the batch
    (divided by B)."""
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / mu.shape[0]
    return cov if covariance is None else cov + covariance.mean(0)


def dip_penalties(cov: Tensor) -> tuple[Tensor, Tensor]:
    """(sum_{i != j} C_ij^2, sum_i (C_ii - 1)^2) for a covariance C [L, L]: DIP-VAE's off-diagonal
    and diagonal penalties, weighed by lambda_od and lambda_d (Kumar et al. 2018, eq. 6)."""
    diagonal = cov.diagonal()
    return (cov.square().sum() - diagonal.square().sum(), (diagonal - 1).square().sum())


def permute_dims(z: Tensor) -> Tensor:
    """Each latent dimension of z [B, L] shuffled across the batch on its own (Kim & Mnih 2018,
    algorithm 1): samples of prod_d q(z_d), the product of the aggregate posterior's marginals."""
    order = torch.rand(z.shape, device=z.device).argsort(dim=0)
    return z.gather(0, order)


def density_ratio_losses(logits_q: Tensor, logits_permuted: Tensor) -> Tensor:
    """The discriminator's loss [scalar]: the logistic loss of telling z ~ q(z) (label 1, logits
    [B]) from z ~ prod_d q(z_d) (label 0, logits [B]), each half weighted 1/2. At its optimum the
    logit is log q(z) - log prod_d q(z_d), so its mean over z ~ q(z) estimates the total
    correlation (Kim & Mnih 2018, eq. 3; the density-ratio trick)."""
    return 0.5 * (F.softplus(-logits_q).mean() + F.softplus(logits_permuted).mean())
