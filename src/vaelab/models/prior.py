"""The second stage of VQ-VAE: an autoregressive prior over code maps, which makes it generative.

A small causal transformer models p(z) = prod_i p(z_i | z_<i) over the H'W' code indices of the
frozen VQ-VAE's encoder, in raster order (with the residual quantizer, the Q indices of each
position in turn, coarse to fine: H'W'Q indices). Its negative log-likelihood of the codes (nats per
image) plus the VQ-VAE's reconstruction term bounds -log p(x):
    -log p(x) <= -log p(x | z_q(x)) - log p(z(x))
(the encoder is deterministic, so q(z|x) is a point mass and the ELBO has no entropy term).
Sampling draws codes one position at a time and decodes them with the VQ-VAE.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vaelab.checkpoints import load_checkpoint
from vaelab.checks import check_file, require
from vaelab.errors import UserError
from vaelab.models.base import GenerativeModel
from vaelab.models.vqvae import VQVAE
from vaelab.settings import setting


def load_vqvae(path: str) -> dict:
    """A VQ-VAE checkpoint (hyper_parameters, state_dict, vaelab run config), with a one-line
    error for anything else."""
    checkpoint = load_checkpoint(path)
    target = (checkpoint["vaelab"].get("config") or {}).get("model", {}).get("_target_", "")
    if not target.endswith("VQVAE"):
        raise UserError(
            f"prior.vqvae_ckpt={path} is a {target.rsplit('.', 1)[-1] or 'unknown'} checkpoint, not a "
            "VQ-VAE; train one with model=vqvae first"
        )
    return checkpoint


class CausalTransformer(nn.Module):
    """Next-code logits for code sequences [B, N] -> [B, N, K] (position i sees codes < i).
    ``depth`` > 1: the sequence interleaves that many codebooks (the residual quantizer's stages,
    position i from stage i mod depth), each with embeddings of its own, since code k of one
    stage and code k of another are different vectors."""

    def __init__(
        self, num_codes: int, length: int, width: int, layers: int, heads: int, dropout: float, depth: int = 1
    ):
        super().__init__()
        self.start = nn.Parameter(torch.zeros(1, 1, width))
        self.embed = nn.Embedding(num_codes * depth, width)
        stages = torch.arange(length) % depth
        self.register_buffer("offsets", stages * num_codes, persistent=False)
        self.position = nn.Parameter(torch.randn(1, length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, batch_first=True, norm_first=True)
        # Nested tensors are for padded batches; code maps have none (and norm_first disables them anyway).
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_codes)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False)

    def forward(self, codes: Tensor) -> Tensor:
        batch, n = codes.shape
        # Shift right: position i is predicted from the start token and codes 0..i-1.
        previous = self.embed(codes[:, :-1] + self.offsets[: n - 1])
        h = torch.cat([self.start.expand(batch, 1, -1), previous], 1) + self.position[:, :n]
        h = self.blocks(h, mask=self.mask[:n, :n], is_causal=True)
        return self.head(self.norm(h))


class CodePrior(GenerativeModel):
    """Trains the prior on the frozen VQ-VAE of ``vqvae_ckpt``; the VQ-VAE's weights and
    hyperparameters are stored in this model's own checkpoint, so it stands alone."""

    data_from = "vqvae_ckpt"  # it trains on the data set of its VQ-VAE's run

    class Settings(GenerativeModel.Settings):
        vqvae_ckpt: str | None = setting(..., "the VQ-VAE run's checkpoint (prior.vqvae_ckpt)")
        width: int = setting(128, "the transformer's width", ge=1)
        layers: int = setting(4, "transformer blocks", ge=1)
        heads: int = setting(4, "attention heads (a divisor of width)", ge=1)
        dropout: float = setting(0.1, "dropout in the blocks", ge=0, lt=1)

    def __init__(
        self,
        vqvae_ckpt: str | None,
        optimizer: dict,
        scheduler: dict | None = None,
        width: int = Settings.default("width"),
        layers: int = Settings.default("layers"),
        heads: int = Settings.default("heads"),
        dropout: float = Settings.default("dropout"),
        vqvae_hparams: dict | None = None,
    ):
        vqvae_state = None
        if vqvae_hparams is None:
            if not vqvae_ckpt:
                raise UserError("model=vqvae_prior needs prior.vqvae_ckpt=<a VQ-VAE checkpoint>")
            checkpoint = load_vqvae(vqvae_ckpt)
            vqvae_hparams, vqvae_state = checkpoint["hyper_parameters"], checkpoint["state_dict"]
        super().__init__()
        self.save_hyperparameters(logger=False)  # the loggers get the whole run config (train())
        self.vqvae = VQVAE(**vqvae_hparams)
        if vqvae_state is not None:
            self.vqvae.load_state_dict(vqvae_state)
        self.vqvae.requires_grad_(False)
        self.image_shape = self.vqvae.image_shape
        self.num_dims = self.vqvae.num_dims
        self.code_shape = self.vqvae.code_shape
        self.num_codes = self.vqvae.quantizer.num_codes
        depth = math.prod(self.vqvae.quantizer.index_shape)  # codebooks per position: Q for the residual quantizer
        self.prior = CausalTransformer(self.num_codes, math.prod(self.code_shape), width, layers, heads, dropout, depth)

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """The transformer's values, then the VQ-VAE's checkpoint."""
        super().check_config(model_cfg, cfg)
        require(
            model_cfg.width % model_cfg.heads == 0,
            f"model.width ({model_cfg.width}) must be a multiple of model.heads "
            f"({model_cfg.heads}); set model.heads to a divisor of it",
        )
        require(model_cfg.vqvae_ckpt is not None, "model=vqvae_prior needs prior.vqvae_ckpt=<a VQ-VAE checkpoint>")
        check_file(model_cfg.vqvae_ckpt, "prior.vqvae_ckpt", "a VQ-VAE run's checkpoint")

    def networks(self) -> tuple[nn.Module, ...]:
        return (self.prior,)  # the VQ-VAE is frozen

    @property
    def vq(self) -> VQVAE:
        return self.vqvae

    @torch.no_grad()
    def encode_to_indices(self, x: Tensor) -> Tensor:
        """Images -> code maps [B, H', W'] of the frozen VQ-VAE."""
        return self.vqvae.encode_to_indices(x)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code maps [B, H', W'] -> images, by the frozen VQ-VAE's decoder."""
        return self.vqvae.decode_indices(indices)

    def code_nll(self, codes: Tensor) -> Tensor:
        """-log p(z) per image [B], in nats."""
        flat = codes.flatten(1)
        logits = self.prior(flat).float()
        return F.cross_entropy(logits.transpose(1, 2), flat, reduction="none").sum(1)

    def step_metrics(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        codes = self.encode_to_indices(x)
        prior_nll = self.code_nll(codes)
        with torch.no_grad():
            recon = -self.vqvae.likelihood.log_prob(x, self.vqvae.decode(self.vqvae.quantizer.lookup(codes)))
        loss = prior_nll.mean()
        metrics = {"loss": loss, "prior_nll": prior_nll.mean(), "recon": recon.mean()}
        return loss, {name: value.detach().float() for name, value in metrics.items()}

    def kl_term(self, metrics: dict[str, Tensor]) -> Tensor:
        """-log p(codes) under the learned prior: the KL of the one-hot q(k|x) to it."""
        return metrics["prior_nll"]

    def bpd_offset(self) -> float:
        return self.vqvae.likelihood.bpd_offset_nats_per_dim

    @torch.no_grad()
    def sample_codes(
        self, num_samples: int, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        n = math.prod(self.code_shape)
        codes = torch.zeros(num_samples, n, dtype=torch.long, device=self.device)
        for i in range(n):
            probs = torch.softmax(self.prior(codes[:, : i + 1])[:, i].float() / temperature, -1)
            codes[:, i] = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(self.device)
        return codes.view(num_samples, *self.code_shape)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        was_training = self.training
        self.eval()
        images = self.vqvae.decode_indices(self.sample_codes(num_samples, generator))
        self.train(was_training)
        return images

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.vqvae.reconstruct(x)
