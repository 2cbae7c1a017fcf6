"""What a model is, as the training loop (``vaelab.loop.TrainingLoop``) and evaluation see it.

A model implements ``step_metrics`` (its loss and the batch means it logs), ``with_derived``
(metrics computed from those means, exact for epoch means), ``reconstruct`` and ``sample``, and
checks its own config values in the classmethod ``check_config``. Everything about how it is
trained lives in the loop.

Two families, told apart by what they can do (``isinstance(model, LatentVariableModel)``), never
by asking for attributes: a ``LatentVariableModel`` has a posterior q(z|x) over a continuous
latent (the VAE and its variants); a ``CodebookModel`` works on the code maps of a VQ-VAE (the
VQ-VAE itself, and its learned prior)."""

from __future__ import annotations

import inspect
from typing import Protocol, runtime_checkable

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab.loop import TrainingLoop, WeightedSums

__all__ = ["CodebookModel", "GenerativeModel", "LatentVariableModel", "WeightedSums"]


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


class GenerativeModel(TrainingLoop):
    """Base of every model; see the module docstring for what a subclass implements."""

    # The model setting that names another run's checkpoint whose data set this model trains on
    # (the VQ-VAE's prior trains on its VQ-VAE's data): None for a model trained on data=...
    data_from: str | None = None

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """Checks of this model's own settings, run by ``vaelab.config.check_config`` before
        anything is loaded or built, on the class named by ``model._target_``. ``model_cfg`` is
        the run's ``model`` node, ``cfg`` the whole run config (for what the model's settings
        must agree with, such as ``cfg.data``).

        A bad value raises a ``UserError`` whose one-line message names the key, the value and
        what to set instead; ``vaelab.checks`` has helpers for that (``require``,
        ``positive_int``, ``flag``, ...). The settings every model has (``optimizer``,
        ``scheduler``, ``compile``, ``channels_last``) are checked before this is called. A
        subclass checks its own keys after its base class's::

            @classmethod
            def check_config(cls, model_cfg, cfg):
                super().check_config(model_cfg, cfg)
                require(model_cfg.k >= 1, f"model.k must be ≥ 1, got {model_cfg.k!r}")
        """

    @classmethod
    def takes(cls, key: str) -> bool:
        """Whether the constructor has a parameter ``key`` (its own, or a base class's that it
        passes ``**kwargs`` on to)."""
        for klass in cls.__mro__:
            if "__init__" not in vars(klass):
                continue
            parameters = inspect.signature(vars(klass)["__init__"]).parameters
            if key in parameters:
                return True
            if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
                return False
        return False

    def step_metrics(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and the detached batch means of what is logged."""
        raise NotImplementedError

    def with_derived(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """``metrics`` plus the metrics that follow from them (exact for epoch means)."""
        return metrics

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
