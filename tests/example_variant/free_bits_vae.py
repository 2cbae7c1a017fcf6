"""An example of a new model variant, made by the README's recipe and nothing else: this class
and conf/model/free_bits_vae.yaml, with no file of vaelab touched. To train it:

    PYTHONPATH=tests/example_variant python train.py \\
        'hydra.searchpath=[file://tests/example_variant/conf]' model=free_bits_vae model.free_bits=0.5

(tests/test_new_variant.py does that and reads back what the run logged.)
"""

from __future__ import annotations

from omegaconf import DictConfig
from torch import Tensor

from vaelab.checks import is_number, require
from vaelab.models import VAE


class FreeBitsVAE(VAE):
    """Free bits (Kingma et al. 2016, appendix C.8): loss = -E_q[log p(x|z)] + beta * sum_j
    max(free_bits, KL_j), with KL_j the batch mean of latent dimension j's KL. A dimension's KL
    below ``free_bits`` nats costs nothing more, so the objective stops pushing it to zero. The
    loss's KL term is logged as ``kl_floored`` beside the true ``kl`` (the ELBO keeps the true KL)."""

    def __init__(self, *args, free_bits: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.free_bits = free_bits

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        super().check_config(model_cfg, cfg)  # the VAE's own settings first
        free_bits = model_cfg.free_bits
        require(
            is_number(free_bits) and free_bits >= 0,
            f"model.free_bits must be ≥ 0 nats per latent dimension, got {free_bits!r}; set model.free_bits=<λ>",
        )
        require(
            model_cfg.posterior == "diagonal",
            "model=free_bits_vae needs model.posterior=diagonal (a full-covariance KL does not split per dimension)",
        )

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        terms["kl_floored"] = terms["kl_per_dim"].mean(0).clamp(min=self.free_bits).sum()
        terms["loss"] = -terms["log_px_given_z"].mean() + self.beta * terms["kl_floored"]
        return terms
