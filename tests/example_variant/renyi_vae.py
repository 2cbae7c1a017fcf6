"""A second example of a new model variant, made by the README's recipe alone: this class and
conf/model/renyi_vae.yaml. To train it:

    PYTHONPATH=tests/example_variant python train.py \\
        'hydra.searchpath=[file://tests/example_variant/conf]' model=renyi_vae model.alpha=0.5

(tests/test_new_variant.py does that and reads back what the run logged.)
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab.checks import require
from vaelab.models import VAE
from vaelab.settings import setting


def renyi_bound(log_w: Tensor, alpha: float) -> Tensor:
    """The variational Rényi bound from k log-weights [k, B] (Li & Turner 2016, eq. 5 with its
    Monte-Carlo estimate, eq. 9): L_alpha = 1 / (1 - alpha) * log (1/k) sum_k w_k^(1 - alpha); [B].
    alpha = 0 is the IWAE bound; alpha -> 1 is the ELBO, the mean of log w."""
    if alpha == 1:
        return log_w.mean(0)
    return (torch.logsumexp((1 - alpha) * log_w, dim=0) - math.log(log_w.shape[0])) / (1 - alpha)


class RenyiVAE(VAE):
    """Trains the VR bound with ``k`` samples of q(z|x) and order ``alpha`` in [0, 1]: between the
    ELBO (alpha = 1) and the IWAE bound (alpha = 0). The bound is logged as ``vr_bound``; recon, kl
    and the ELBO stay those of the model's single-sample terms."""

    reparameterized_only = True  # the bound needs the samples' pathwise gradient

    class Settings(VAE.Settings):
        alpha: float = setting(0.5, "the bound's order: 1 the ELBO, 0 the IWAE bound", ge=0, le=1)
        k: int = setting(5, "samples of q(z|x) per example", ge=1)

    def __init__(self, *args, alpha: float = Settings.default("alpha"), k: int = Settings.default("k"), **kwargs):
        super().__init__(*args, **kwargs)
        self.alpha, self.k = alpha, k

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        # A setting inherited from VAE that this bound does not use is refused, not ignored.
        super().check_config(model_cfg, cfg)
        require(model_cfg.beta == 1, "model.beta has no effect on model=renyi_vae, whose bound weighs no KL; drop it")

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        terms["vr_bound"] = renyi_bound(self.log_weights(x, self.k), self.alpha)
        terms["loss"] = -terms["vr_bound"].mean()
        return terms
