"""DIP-VAE I and II (Kumar et al. 2018, "Variational Inference of Disentangled Latent Concepts
from Unlabeled Observations")."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from vaelab import objectives
from vaelab.models.vae import VAE
from vaelab.settings import setting


class DIPVAE(VAE):
    """loss = -E_q[log p(x|z)] + beta * KL + lambda_od * sum_{i != j} C_ij^2
    + lambda_d * sum_i (C_ii - 1)^2: the ELBO with a penalty that matches a covariance C [L, L] of
    the batch to the identity (``objectives.dip_covariance``). ``kind`` i: C = Cov_p(x)[mu(x)], the
    posterior means' covariance (eq. 6); ii: C = Cov_q(z)[z] = E_p(x)[Sigma(x)] + Cov_p(x)[mu(x)],
    the aggregate posterior's (eq. 7). ``lambda_d`` null is the paper's choice, 10 * lambda_od for
    DIP-VAE-I and lambda_od for DIP-VAE-II.

    Logged beside recon and kl: ``dip_offdiag`` and ``dip_diag``, the two penalties before their
    weights (per batch; their epoch means are means over batches); ``elbo`` is the true bound."""

    standard_prior_only = "matches a covariance of q(z) to the identity, the covariance of N(0, I)"

    class Settings(VAE.Settings):
        kind: Literal["i", "ii"] = setting("i", "DIP-VAE-I (the means' covariance) or -II (q(z)'s)", says="i or ii")
        lambda_od: float = setting(10.0, "the off-diagonal penalty's weight", ge=0, says="a number ≥ 0")
        lambda_d: float | None = setting(
            None, "the diagonal penalty's weight; null: 10 * lambda_od (kind i) or lambda_od (kind ii)", ge=0
        )

    def __init__(
        self,
        *args,
        kind: str = Settings.default("kind"),
        lambda_od: float = Settings.default("lambda_od"),
        lambda_d: float | None = Settings.default("lambda_d"),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.kind, self.lambda_od = kind, lambda_od
        self.lambda_d = lambda_d if lambda_d is not None else lambda_od * (10.0 if kind == "i" else 1.0)

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        q = self.posterior(x)
        terms = self.terms(x, q)
        cov = objectives.dip_covariance(q.mu, q.covariance() if self.kind == "ii" else None)
        offdiag, diag = objectives.dip_penalties(cov)
        elbo_loss = objectives.beta_vae_loss(terms["log_px_given_z"], terms["kl"], self.beta)
        loss = elbo_loss + self.lambda_od * offdiag + self.lambda_d * diag
        return {**terms, "dip_offdiag": offdiag, "dip_diag": diag, "loss": loss}
