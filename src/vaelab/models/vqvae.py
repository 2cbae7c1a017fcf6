"""VQ-VAE (van den Oord et al. 2017): convolutional encoder, vector quantizer, decoder.

loss = -log p(x|z_q) + (|sg[z_e] - e|^2 + beta |z_e - sg[e]|^2) summed over the example's code
elements; every term is per example, averaged over the batch (nats per example), so no weight
depends on the batch size. With the uniform prior over the K codes of the paper's first stage,
KL(q || p) = H' W' log K, so the ELBO is -recon - H' W' log K (logged as ``elbo``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from vaelab.checks import require, set_by_user
from vaelab.distributions import build_likelihood, check_likelihood
from vaelab.models.base import GenerativeModel
from vaelab.quantizer import build_quantizer, quantizer_class
from vaelab.settings import setting, validate

if TYPE_CHECKING:
    from torch.optim import Optimizer


class ResidualBlock(nn.Module):
    """x + conv1x1(relu(conv3x3(relu(x)))), the paper's residual block."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


def vq_encoder(in_channels: int, hidden: int, res_blocks: int, code_dim: int) -> nn.Sequential:
    """Two stride-2 4x4 convolutions (H/4 x W/4), residual blocks, a 1x1 convolution to D."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden // 2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden // 2, hidden, 4, stride=2, padding=1),
        *[ResidualBlock(hidden, hidden // 4 or 1) for _ in range(res_blocks)],
        nn.ReLU(),
        nn.Conv2d(hidden, code_dim, 1),
    )


def vq_decoder(out_channels: int, hidden: int, res_blocks: int, code_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(code_dim, hidden, 3, padding=1),
        *[ResidualBlock(hidden, hidden // 4 or 1) for _ in range(res_blocks)],
        nn.ReLU(),
        nn.ConvTranspose2d(hidden, hidden // 2, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(hidden // 2, out_channels, 4, stride=2, padding=1),
    )


class VQVAE(GenerativeModel):
    class Settings(GenerativeModel.Settings):
        image_shape: list[int] = setting(..., "the images' [channels, height, width] (data.image_shape)")
        likelihood: dict = setting(..., "p(x|z) (the likelihood group)")
        quantizer: dict = setting(
            ..., "the quantizer (the quantizer group: Vector-, FiniteScalar- or ResidualVectorQuantizer)"
        )
        hidden: int = setting(256, "channels of the networks (size.vq_hidden); the first convolution has half", ge=2)
        res_blocks: int = setting(2, "residual blocks of each network (size.vq_res_blocks)", ge=0)
        channels_last: bool = setting(False, "NHWC memory layout (faster convolutions on GPUs with tensor cores)")

    def __init__(
        self,
        image_shape: list[int],
        likelihood: dict,
        quantizer: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        hidden: int = Settings.default("hidden"),
        res_blocks: int = Settings.default("res_blocks"),
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the loggers get the whole run config (train())
        channels, height, width = image_shape
        self.image_shape = tuple(image_shape)
        self.num_dims = math.prod(image_shape)
        self.latent_shape = (height // 4, width // 4)
        self.quantizer = build_quantizer(quantizer)
        # A code map's shape: one index per latent position, or Q of them for the residual quantizer.
        self.code_shape = self.latent_shape + self.quantizer.index_shape
        code_dim = self.quantizer.code_dim
        self.encoder = vq_encoder(channels, hidden, res_blocks, code_dim)
        self.decoder = vq_decoder(channels, hidden, res_blocks, code_dim)
        self.likelihood = build_likelihood(image_shape=image_shape, **likelihood)
        self.code_elements = math.prod(self.latent_shape) * (quantizer.get("lookup_dim") or code_dim)

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """The quantizer, the networks, the image size and the likelihood."""
        super().check_config(model_cfg, cfg)
        q = model_cfg.quantizer
        kind = quantizer_class(q)
        validate(
            kind.Settings,
            q,
            "model.quantizer",
            unknown=lambda key: f"model.quantizer.{key} is not a setting of {kind.__name__}; drop it",
        )
        learned = "update" in kind.Settings.model_fields  # a codebook of its own (not FSQ's implicit grid)
        if learned and q["update"] == "loss":  # the codebook learns by gradient: no moving averages
            for key in ("decay", "epsilon"):
                require(
                    not set_by_user(cfg, f"model.quantizer.{key}", like=("_target_",)),
                    f"model.quantizer.{key} has no effect with model.quantizer.update=loss (it is "
                    f"{'the rate' if key == 'decay' else 'the smoothing'} of the EMA codebook updates); "
                    "drop it or set model.quantizer.update=ema",
                )
        require(
            not learned
            or q.kmeans_init
            or not set_by_user(cfg, "model.quantizer.kmeans_iterations", like=("_target_",)),
            "model.quantizer.kmeans_iterations has no effect with model.quantizer.kmeans_init=false; "
            "drop it or set model.quantizer.kmeans_init=true",
        )
        _, height, width = model_cfg.image_shape
        require(
            height % 4 == 0 and width % 4 == 0 and height >= 4 and width >= 4,
            f"model=vqvae needs images whose height and width are multiples of 4 (it downsamples by 4), "
            f"got {height}x{width}; choose another data set or data.image_shape",
        )
        check_likelihood(model_cfg.likelihood, cfg.data.get("num_levels"))

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.forget_restarted_codes(optimizer)

    def forget_restarted_codes(self, optimizer: Optimizer) -> None:
        """Zero the optimizer's per-element state of the codes restarted in this step's forward
        (update=loss: Adam's exp_avg and exp_avg_sq rows, or a momentum buffer's), before the step
        reads it: a code re-seeded on an encoder output is not pushed on by the momentum of the
        vector it replaced. (Adam's step count, and so its bias correction, is shared by the whole
        codebook and does not restart with the row.)"""
        for book in self.quantizer.codebooks():
            restarted, state = book.restarted, optimizer.state.get(book.codebook)
            if not len(restarted) or not state:  # no state: an EMA codebook, or before the first step
                continue
            for value in state.values():
                if torch.is_tensor(value) and value.shape == book.codebook.shape:
                    value[restarted] = 0

    def decode(self, z_q: Tensor) -> Tensor:
        """Likelihood parameters, cropped to the image when H or W is not a multiple of 4."""
        out = self.decoder(z_q)
        return out[..., : self.image_shape[1], : self.image_shape[2]]

    def terms(self, x: Tensor) -> dict[str, Tensor]:
        z_q, vq = self.quantizer(self.encoder(x))
        log_px_given_z = self.likelihood.log_prob(x, self.decode(z_q))
        return {"log_px_given_z": log_px_given_z, **vq}

    def step_metrics(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        terms = self.terms(x)
        recon = -terms["log_px_given_z"].mean()
        vq = terms["vq_loss"] * self.code_elements  # per-element mean -> sum per example
        loss = recon + vq
        metrics = {
            "loss": loss,
            "recon": recon,
            "vq": vq,
            "commitment": terms["commitment"],
            "perplexity": terms["perplexity"],
            "codes_used": terms["codes_used"],
            **{name: terms[name] for name in self.quantizer.logged},
        }
        return loss, {name: value.detach().float() for name, value in metrics.items()}

    def kl_term(self, metrics: dict[str, Tensor]) -> Tensor:
        """KL(q(k|x) || uniform) = log K per index of the code map: q is one-hot (van den Oord et al. 2017)."""
        kl = math.prod(self.code_shape) * math.log(self.quantizer.num_codes)
        return torch.as_tensor(kl, device=metrics["recon"].device)

    def with_derived(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        device = metrics["recon"].device
        dead = torch.tensor(float(self.quantizer.dead_codes()), device=device)
        return {**super().with_derived(metrics), "kl": self.kl_term(metrics), "dead_codes": dead}

    @property
    def vq(self) -> VQVAE:
        return self

    @torch.no_grad()
    def encode_to_indices(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] -> code maps [B, H', W'] ([B, H', W', Q] for the residual quantizer).
        Not the quantizer's forward: that all-reduces its code counts under DDP (and moves an EMA
        codebook in training mode), and the image callback encodes on rank 0 alone."""
        return self.quantizer.indices(self.encoder(x))

    def code_nll(self, codes: Tensor) -> None:
        """The first stage's prior over code maps is uniform: no learned density."""
        return None

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode_indices(self.encode_to_indices(x))

    @torch.no_grad()
    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code maps [B, H', W'] -> images. The residual quantizer's [B, H', W', n] decode the sum of the
        first n <= Q stages' codes."""
        return self.likelihood.mean(self.decode(self.quantizer.lookup(indices)))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """Codes drawn uniformly (the first stage's prior). Recognisable samples need the
        learned prior over code maps."""
        indices = torch.randint(self.quantizer.num_codes, (num_samples, *self.code_shape), generator=generator)
        return self.decode_indices(indices.to(self.device))
