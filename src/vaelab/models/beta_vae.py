"""β-VAE (Higgins et al. 2017) with a KL schedule and optional free bits."""

from __future__ import annotations

import torch
from torch import Tensor

from vaelab.models.vae import VAE
from vaelab.schedules import build_kl_schedule


class BetaVAE(VAE):
    """loss = -E_q[log p(x|z)] + beta(t) * KL, or with capacity control
    -E_q[log p(x|z)] + gamma * |KL - C(t)|; see ``vaelab.schedules``.

    ``free_bits`` (Kingma et al. 2016): each latent dimension's batch-averaged KL counts as at
    least ``free_bits`` nats, so the objective stops pushing a dimension below that."""

    def __init__(self, *args, kl_schedule: dict | None = None, free_bits: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_schedule_spec = kl_schedule or {"name": "constant"}
        self.free_bits = free_bits
        self._schedule = None

    @property
    def schedule(self):
        """Built on first use, when the number of steps per epoch is known."""
        if self._schedule is None:
            trainer = self._trainer
            steps_per_epoch = int(trainer.num_training_batches) if trainer and trainer.num_training_batches != float("inf") else 1
            self._schedule = build_kl_schedule(self.kl_schedule_spec, self.beta, steps_per_epoch)
        return self._schedule

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        beta, capacity = self.schedule(self.global_step)
        kl = terms["kl"].mean()
        if self.free_bits > 0:
            kl = terms["kl_per_dim"].mean(0).clamp(min=self.free_bits).sum()
        kl_penalty = kl if capacity is None else (kl - capacity).abs()
        terms["loss"] = -terms["log_px_given_z"].mean() + beta * kl_penalty
        terms["beta"] = torch.tensor(beta)
        if capacity is not None:
            terms["capacity"] = torch.tensor(capacity)
        return terms

    def extra_metrics(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: terms[k] for k in ("beta", "capacity") if k in terms}
