"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising")."""

from __future__ import annotations

import inspect
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from vaelab import objectives
from vaelab.checks import require
from vaelab.models.vae import VAE
from vaelab.settings import setting


class TCDiscriminator(nn.Module):
    """d(z) [B] for latents z [B, L]: the logit of "z was drawn from q(z), not from
    prod_d q(z_d)", an MLP with leaky ReLUs (slope 0.2). Trained by ``objectives.density_ratio_losses``,
    d(z) tends to log q(z) - log prod_d q(z_d), whose mean over q(z) is the total correlation."""

    def __init__(self, latent_dim: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.LeakyReLU(0.2)]
            width = size
        self.net = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).squeeze(-1)


class FactorVAE(VAE):
    """loss = -E_q[log p(x|z)] + beta * KL + gamma * TC, with the total correlation TC of q(z)
    estimated by a discriminator d (``TCDiscriminator``) as the mean of d(z) over the batch's
    z ~ q(z|x) (the density-ratio trick, Kim & Mnih 2018, eq. 2-3). The discriminator learns to tell
    those z from the batch with each dimension shuffled on its own (``objectives.permute_dims``),
    by its own Adam settings (the paper's lr 1e-4, betas (0.5, 0.9)): a second parameter group of
    the run's optimizer, which for Adam's per-parameter update is a second optimizer. Each step
    updates both from one batch: the VAE's loss reaches the encoder through d(z) with d held fixed,
    and the discriminator's loss sees the z detached, so each part gets only its own gradient.
    The paper draws the shuffled batch from a second minibatch; this uses the same one (as
    disentanglement_lib does).

    Logged beside recon and kl: ``tc`` (the discriminator's estimate, nats) and
    ``discriminator_loss``; ``loss`` is the sum of both parts' losses (they share no parameters);
    ``elbo`` is the true bound. Gradient clipping (trainer.gradient_clip_val) clips the norm of
    both parts' gradients together."""

    reparameterized_only = True
    standard_prior_only = "weighs its KL to N(0, I) against a total correlation (a factorised prior)"

    class Settings(VAE.Settings):
        gamma: float = setting(35.0, "the total correlation's weight", ge=0, says="a number ≥ 0")
        discriminator_hidden: list[int] = setting(
            [1000] * 6, "the discriminator's hidden widths (the paper's: six layers of 1000)", min_length=1
        )
        discriminator_lr: float = setting(1e-4, "the discriminator's learning rate", gt=0)
        discriminator_betas: list[float] = setting([0.5, 0.9], "the discriminator's Adam betas", min_length=2)

    def __init__(
        self,
        *args,
        gamma: float = Settings.default("gamma"),
        discriminator_hidden: list[int] = Settings.default("discriminator_hidden"),  # noqa: B008 (never mutated)
        discriminator_lr: float = Settings.default("discriminator_lr"),
        discriminator_betas: list[float] = Settings.default("discriminator_betas"),  # noqa: B008
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.gamma = gamma
        self.discriminator = TCDiscriminator(self.hparams.latent_dim, list(discriminator_hidden))
        self.discriminator_lr, self.discriminator_betas = discriminator_lr, tuple(discriminator_betas)

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        super().check_config(model_cfg, cfg)
        require(
            len(model_cfg.discriminator_betas) == 2 and all(0 <= b < 1 for b in model_cfg.discriminator_betas),
            "model.discriminator_betas must be two numbers in [0, 1), such as [0.5, 0.9]",
        )
        optimizer = hydra.utils.get_method(model_cfg.optimizer._target_)
        require(
            "betas" in inspect.signature(optimizer).parameters,
            f"model=factor_vae trains its discriminator with Adam's betas, which {model_cfg.optimizer._target_} "
            "does not take; use model.optimizer._target_=torch.optim.Adam (or AdamW)",
        )

    def optimizer_groups(self) -> list[dict[str, Any]]:
        vae = [p for name, p in self.named_parameters() if not name.startswith("discriminator.")]
        discriminator = {
            "params": list(self.discriminator.parameters()),
            "lr": self.discriminator_lr,
            "betas": self.discriminator_betas,
            "own": ("lr", "betas"),
            "name": "discriminator",
        }
        return [{"params": vae, "name": "vae"}, discriminator]

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        z = terms["z"]  # [B, L], reconstructed from
        held = {name: p.detach() for name, p in self.discriminator.named_parameters()}
        tc = torch.func.functional_call(self.discriminator, held, (z,))  # [B]: d(z) with d fixed
        vae_loss = objectives.beta_vae_loss(terms["log_px_given_z"], terms["kl"], self.beta) + self.gamma * tc.mean()
        z = z.detach()
        discriminator_loss = objectives.density_ratio_losses(
            self.discriminator(z), self.discriminator(objectives.permute_dims(z))
        )
        return {**terms, "tc": tc, "discriminator_loss": discriminator_loss, "loss": vae_loss + discriminator_loss}
