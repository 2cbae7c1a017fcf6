"""What a model is, as the training loop (``vaelab.loop.TrainingLoop``) and evaluation see it.

A model implements ``step_metrics`` (its loss and the batch means it logs), ``with_derived``
(metrics computed from those means, exact for epoch means), ``reconstruct`` and ``sample``; it
declares its settings once, in its nested ``Settings`` schema (``vaelab.settings``), and checks the
rules that join several of them in the classmethod ``check_config``. Everything about how it is
trained lives in the loop.

Two families, told apart by what they can do (``isinstance(model, LatentVariableModel)``), never
by asking for attributes: a ``LatentVariableModel`` has a posterior q(z|x) over a continuous
latent (the VAE and its variants); a ``CodebookModel`` works on the code maps of a VQ-VAE (the
VQ-VAE itself, and its learned prior)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab import objectives
from vaelab.checks import option_name
from vaelab.loop import TrainingLoop
from vaelab.settings import Settings, not_a_setting, setting, validate

__all__ = ["CodebookModel", "GenerativeModel", "LatentVariableModel"]


@runtime_checkable
class LatentVariableModel(Protocol):
    """q(z|x) over a continuous latent [B, L], a prior p(z) and a likelihood p(x|z): what the
    importance-sampled NLL, the KL per dimension, active units, traversals and the
    disentanglement scores need."""

    def posterior(self, x: Tensor) -> object:
        """q(z|x) for images x [B, C, H, W], with ``mu`` [B, L]."""

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's mean and standard deviation per latent, each [B, L] (deterministic)."""

    def decode(self, z: Tensor) -> Tensor:
        """E[x|z] for latents z [B, L]: images [B, C, H, W]."""

    def latent_layers(self) -> list[int]:
        """The sizes of the stochastic layers that make up z, summing to L: [L], or [L1, L2] for
        z = [z1, z2] of a two-layer model (whose decoder reads z1)."""

    def inference_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters of q(z|x)."""

    def log_likelihood(self, x: Tensor, k: int = 1000, chunk: int = 100) -> Tensor:
        """log p(x) estimated by importance sampling with k samples, nats per image [B]."""

    def importance_sampling(self, x: Tensor, k: int, chunk: int = 100) -> tuple[Tensor, Tensor]:
        """The k-sample bound and the mean log p(x|z_k) per image, each [B]."""


@runtime_checkable
class CodebookModel(Protocol):
    """A model over the code maps of a VQ-VAE: ``vq`` is that VQ-VAE (the model itself for a
    VQ-VAE), ``code_nll`` is -log p(codes) per image under the model's prior over code maps (None
    for the VQ-VAE's own uniform prior)."""

    @property
    def vq(self) -> GenerativeModel:
        """The VQ-VAE whose codebook this model works with (a ``vaelab.models.VQVAE``)."""

    def encode_to_indices(self, x: Tensor) -> Tensor:
        """Images [B, C, H, W] -> code maps [B, H', W'] (integers)."""

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Code maps [B, H', W'] -> images [B, C, H, W]."""

    def code_nll(self, codes: Tensor) -> Tensor | None:
        """-log p(codes) per image [B], nats; None under a uniform prior."""


def every_model(base: type | None = None) -> list[type]:
    """Every model class imported so far, depth first."""
    found = []
    for subclass in (base or GenerativeModel).__subclasses__():
        found += [subclass, *every_model(subclass)]
    return found


class GenerativeModel(TrainingLoop):
    """Base of every model; see the module docstring for what a subclass implements."""

    # The model setting that names another run's checkpoint whose data set this model trains on
    # (the VQ-VAE's prior trains on its VQ-VAE's data): None for a model trained on data=...
    data_from: str | None = None

    class Settings(Settings):
        """The settings every model has; a model's own schema extends its base class's."""

        optimizer: dict = setting(..., "torch.optim class (_target_, _partial_: true) and its arguments")
        scheduler: dict | None = setting(None, "a torch.optim.lr_scheduler (_target_, _partial_: true), or null")
        compile: bool = setting(False, "torch.compile the networks (checkpoints load either way)")

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """Checks of this model's settings, run by ``vaelab.config.check_config`` before anything
        is loaded or built, on the class named by ``model._target_``. ``model_cfg`` is the run's
        ``model`` node, ``cfg`` the whole run config (for what the model's settings must agree
        with, such as ``cfg.data``).

        Here: every key against the class's ``Settings`` (types, ranges, allowed values, unknown
        keys). A subclass adds the rules that join several settings, after its base class's, each
        a ``UserError`` with a one-line message that names the key and what to set instead
        (``vaelab.checks.require``)::

            @classmethod
            def check_config(cls, model_cfg, cfg):
                super().check_config(model_cfg, cfg)
                require(model_cfg.k <= model_cfg.k_eval, "model.k must not exceed model.k_eval")
        """
        validate(cls.Settings, model_cfg, "model", unknown=lambda key: cls.unknown_setting(key, cfg))

    @classmethod
    def settle_with_data(cls, model_cfg: DictConfig, datamodule: object) -> None:
        """What the model takes from the loaded data set, settled in ``model_cfg`` before the model
        is built (and so recorded in the run's config and checkpoints): nothing here; the cVAE reads
        its label sizes. Refusals of the data come here too, before anything is trained or written."""

    @classmethod
    def unknown_setting(cls, key: str, cfg: DictConfig) -> str:
        """The message for ``model.key``, which this model does not take: where it belongs if
        another model declares it with ``belongs``, else the closest setting's name."""
        for model in every_model():
            field = model.Settings.model_fields.get(key)
            belongs = ((field.json_schema_extra or {}).get("belongs") if field else None) or None
            if belongs and key not in cls.Settings.model_fields:
                return f"model.{key} {belongs} (this is model={cls.__name__})"
        label = f"model={option_name(cfg, 'model') or cls.__name__}"
        return not_a_setting(f"model.{key}", label, list(cls.Settings.model_fields))

    def step_metrics(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and the detached batch means of what is logged."""
        raise NotImplementedError

    def with_derived(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """``metrics`` plus what follows from them: the ELBO -(recon + KL) (always beta = 1) and its
        bits/dim, from the means of ``recon`` (-log p(x|z)) and of the model's KL term
        (``kl_term``). Both are linear in those means, so deriving them from epoch means is exact."""
        if "recon" not in metrics:
            return metrics
        elbo = -(metrics["recon"] + self.kl_term(metrics))
        bpd = objectives.bits_per_dim(-elbo, self.num_dims, self.bpd_offset())
        return {**metrics, "elbo": elbo, "bpd": bpd}

    def kl_term(self, metrics: dict[str, Tensor]) -> Tensor:
        """The KL part of the ELBO, from the logged means: ``kl`` (a model whose KL is named
        otherwise, or is a constant, overrides this)."""
        return metrics["kl"]

    def bpd_offset(self) -> float:
        """Nats per dimension that bits/dim add for a density of dequantized data (the likelihood's)."""
        return self.likelihood.bpd_offset_nats_per_dim

    def reconstruct(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def networks(self) -> tuple[torch.nn.Module, ...]:
        """The trained networks."""
        return (self.encoder, self.decoder)

    def compile_computation(self) -> None:
        """``model.compile=true``: compile the networks, in place (a model whose whole step can be
        one graph overrides this, as the VAE does). Parameter names, and so checkpoints, stay those
        of the eager model."""
        for network in self.networks():
            network.compile(options={"fallback_random": True})  # the eager code's random draws

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def eval_metrics(self, x: Tensor, stage: str) -> dict[str, Tensor]:
        """Scalars computed only in validation or test (costly ones)."""
        return {}
