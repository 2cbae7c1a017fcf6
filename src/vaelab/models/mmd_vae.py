"""The MMD family: InfoVAE (Zhao et al. 2019) and WAE-MMD (Tolstikhin et al. 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vaelab import objectives
from vaelab.models.vae import VAE
from vaelab.settings import setting


class MMDVAE(VAE):
    """loss = -E_q[log p(x|z)] + beta * KL + mmd_weight * MMD^2(q(z), p(z)), where q(z) is the
    batch's aggregate posterior (the z ~ q(z|x) each example is reconstructed from) and MMD^2 its unbiased estimate
    against as many draws of p(z) = N(0, I) (``objectives.mmd_unbiased``). InfoVAE's objective
    (Zhao et al. 2019, eq. 6) with (1 - alpha) = beta and (alpha + lambda - 1) = mmd_weight; beta = 0
    is the MMD-VAE and WAE-MMD's penalty (Tolstikhin et al. 2018, algorithm 2, with a stochastic
    encoder). The ELBO logged is the true bound (beta = 1), ``mmd`` the batch's estimate.

    ``kernel_scale`` C: null takes WAE's 2 * latent_dim * sigma_p^2 = 2 * latent_dim."""

    reparameterized_only = True
    standard_prior_only = "matches q(z) to samples of N(0, I)"

    class Settings(VAE.Settings):
        beta: float = setting(0.0, "the KL's weight (InfoVAE's 1 - alpha; 0: MMD-VAE, WAE)", ge=0, says="a number ≥ 0")
        mmd_weight: float = setting(10.0, "the MMD's weight (InfoVAE's alpha + lambda - 1)", ge=0, says="a number ≥ 0")
        kernel: Literal[tuple(objectives.KERNELS)] = setting("imq", "the MMD's kernel: rbf or imq (WAE's)")
        kernel_scale: float | None = setting(None, "the kernel's C; null: 2 * latent_dim", gt=0)

    def __init__(
        self,
        *args,
        beta: float = Settings.default("beta"),
        mmd_weight: float = Settings.default("mmd_weight"),
        kernel: str = Settings.default("kernel"),
        kernel_scale: float | None = Settings.default("kernel_scale"),
        **kwargs,
    ):
        super().__init__(*args, beta=beta, **kwargs)
        self.mmd_weight, self.kernel = mmd_weight, kernel
        self.kernel_scale = kernel_scale if kernel_scale is not None else 2.0 * self.hparams.latent_dim

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        z = terms["z"]  # [B, L]: the batch's draw of q(z), the one it reconstructs from
        mmd = objectives.mmd_unbiased(z, torch.randn_like(z), self.kernel, self.kernel_scale)
        recon_and_kl = objectives.beta_vae_loss(terms["log_px_given_z"], terms["kl"], self.beta)
        return {**terms, "mmd": mmd, "loss": recon_and_kl + self.mmd_weight * mmd}
