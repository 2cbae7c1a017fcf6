"""An example of a new model variant, made by the README's recipe and nothing else: this class
and conf/model/free_bits_vae.yaml, with no file of vaelab touched. To train it:

    PYTHONPATH=tests/example_variant python train.py \\
        'hydra.searchpath=[file://tests/example_variant/conf]' model=free_bits_vae model.free_bits=0.5

(tests/test_new_variant.py does that and reads back what the run logged.)
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor

from vaelab.checks import require
from vaelab.models import VAE
from vaelab.settings import setting


class FreeBitsVAE(VAE):
    """Free bits (Kingma et al. 2016, appendix C.8): loss = -E_q[log p(x|z)] + beta * sum_j
    max(free_bits, KL_j), with KL_j the batch mean of latent dimension j's KL. A dimension's KL
    below ``free_bits`` nats costs nothing more, so the objective stops pushing it to zero. The
    loss's KL term is logged as ``kl_floored`` beside the true ``kl`` (the ELBO keeps the true KL)."""

    class Settings(VAE.Settings):
        free_bits: float = setting(
            0.5,
            "nats per latent dimension below which its KL costs nothing more",
            ge=0,
            unit=" nats per latent dimension",
            message="{key} must be ≥ 0 nats per latent dimension, got {value!r}; set {key}=<λ>",
        )

    def __init__(self, *args, free_bits: float = Settings.default("free_bits"), **kwargs):
        super().__init__(*args, **kwargs)
        self.free_bits = free_bits

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        super().check_config(model_cfg, cfg)  # every setting against Settings first
        require(
            model_cfg.posterior == "diagonal",
            "model=free_bits_vae needs model.posterior=diagonal (a full-covariance KL does not split per dimension)",
        )

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        terms["kl_floored"] = terms["kl_per_dim"].mean(0).clamp(min=self.free_bits).sum()
        terms["loss"] = -terms["log_px_given_z"].mean() + self.beta * terms["kl_floored"]
        return terms
