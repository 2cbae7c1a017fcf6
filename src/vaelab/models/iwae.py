"""Importance-weighted autoencoder (Burda et al. 2016), with the optional DReG estimator."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import Tensor
from torch.func import functional_call

from vaelab import objectives
from vaelab.checks import require
from vaelab.distributions import POSTERIORS
from vaelab.errors import UserError
from vaelab.models.vae import VAE
from vaelab.settings import setting

if TYPE_CHECKING:
    from vaelab.distributions import DiagonalGaussian, FullCovGaussian


def detached_parameters(module: torch.nn.Module) -> dict[str, Tensor]:
    """The module's parameters and buffers, cut from the graph (for ``functional_call``)."""
    return {name: t.detach() for name, t in (*module.named_parameters(), *module.named_buffers())}


IWAE_BOUND = "belongs to the IWAE bound; use model=iwae"


class IWAE(VAE):
    """loss = -L_k, L_k = log (1/k) sum_k p(x, z_k) / q(z_k|x) with z_k ~ q(z|x), the k-sample bound
    (k in training, ``k_eval`` in validation and test). ``dreg``: the doubly reparameterized
    gradient for the encoder (Tucker et al. 2018), which has lower variance for large k."""

    reparameterized_only = True

    class Settings(VAE.Settings):
        k: int = setting(5, "samples of q(z|x) per example in training", ge=1, belongs=IWAE_BOUND)
        k_eval: int = setting(50, "samples per example in validation and test", ge=1, belongs=IWAE_BOUND)
        dreg: bool = setting(False, "the doubly reparameterized encoder gradient", belongs=IWAE_BOUND)

    def __init__(
        self,
        *args,
        k: int = Settings.default("k"),
        k_eval: int = Settings.default("k_eval"),
        dreg: bool = Settings.default("dreg"),
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.k, self.k_eval, self.dreg = k, k_eval, dreg
        if dreg and self.flow is not None:
            raise UserError("model.dreg=true needs a Gaussian posterior; set model.posterior=diagonal")
        if dreg and self.upward is not None:
            raise UserError("model.dreg=true is implemented for one Gaussian layer only; set model.top_latents=0")

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        super().check_config(model_cfg, cfg)
        # The bound weighs no KL term (beta = 1 is what it computes).
        require(
            model_cfg.beta == 1,
            "model.beta has no effect on model=iwae: the importance-weighted bound has no KL term to weigh; "
            "drop model.beta (model=beta_vae weighs the KL)",
        )
        require(
            not model_cfg.dreg or model_cfg.posterior in POSTERIORS,
            f"model.dreg=true needs a Gaussian posterior (it evaluates q with its parameters held fixed at "
            f"the sampled z, which model.posterior={model_cfg.posterior} cannot); set model.posterior=diagonal",
        )

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        k = self.k if self.training else self.k_eval
        q = self.posterior(x)
        z, log_q = q.rsample_with_log_prob(k)  # [k, B, L], [k, B]
        log_px_given_z = self.likelihood.log_prob(x, self.decoder_params(z))  # [k, B]
        log_w = log_px_given_z + self.prior.log_prob(z) - log_q
        bound = objectives.iwae_bound(log_w)
        if self.dreg and self.training:
            loss = -bound.mean().detach() - self.dreg_surrogate(x, q, z, log_w).mean()
        else:
            loss = -bound.mean()
        log_px_mean = log_px_given_z.mean(0)
        terms = {"loss": loss, "iwae_bound": bound, "log_px_given_z": log_px_mean}
        if self.prior.closed_form and q.gaussian:
            terms["kl"], terms["kl_per_dim"] = self.prior.kl(q)
        else:  # log q(z|x) - log p(z) = log p(x|z) - log w at the same k samples: the Monte-Carlo KL
            terms["kl"] = (log_px_given_z - log_w).mean(0)
        terms["elbo"] = objectives.elbo(log_px_mean, terms["kl"])
        return terms

    def dreg_surrogate(self, x: Tensor, q: DiagonalGaussian | FullCovGaussian, z: Tensor, log_w: Tensor) -> Tensor:
        """Zero in value; its gradient is DReG's: for the encoder sum_k w~_k^2 d log w_k / dz * dz/dphi
        (log q's own parameters held fixed), for the decoder sum_k w~_k d log w_k / dtheta, with
        w~ the normalised weights (Tucker et al. 2018, eq. 8)."""
        weights = torch.softmax(log_w.detach(), dim=0)
        # The generative model: z without its path to the encoder (a VampPrior's log p(z) still
        # reaches the encoder directly, through its pseudo-inputs' posteriors, as in plain IWAE).
        z_fixed = z.detach()
        log_w_decoder = self.likelihood.log_prob(x, self.decoder(z_fixed)) + self.prior.log_prob(z_fixed)
        # Encoder: through z only. Every generative parameter (the decoder's, the likelihood's,
        # e.g. a learned sigma, and a learned prior's) and q's own parameters are held fixed, so this term sends nothing
        # to the generative model, which gets exactly the IWAE gradient from the term above.
        decoded = functional_call(self.decoder, detached_parameters(self.decoder), (z,))
        log_px_given_z = functional_call(self.likelihood, detached_parameters(self.likelihood), (x, decoded))
        log_w_encoder = log_px_given_z + self.prior.log_prob(z, fixed=True) - q.detached().log_prob(z)
        surrogate = (weights * log_w_decoder).sum(0) + (weights.pow(2) * log_w_encoder).sum(0)
        return surrogate - surrogate.detach()
