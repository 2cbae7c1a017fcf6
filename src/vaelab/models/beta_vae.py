"""β-VAE (Higgins et al. 2017) with a KL schedule and optional free bits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab.checks import require, set_by_user
from vaelab.models.vae import VAE
from vaelab.priors import prior_class
from vaelab.schedules import build_kl_schedule, check_kl_schedule
from vaelab.settings import setting

if TYPE_CHECKING:
    from collections.abc import Callable


class BetaVAE(VAE):
    """loss = -E_q[log p(x|z)] + beta(t) * KL, or with capacity control
    -E_q[log p(x|z)] + gamma * |KL - C(t)|; see ``vaelab.schedules``.

    ``free_bits`` (Kingma et al. 2016): each latent dimension's batch-averaged KL counts as at
    least ``free_bits`` nats, so the objective stops pushing a dimension below that."""

    class Settings(VAE.Settings):
        beta: float = setting(4.0, "the KL's weight (its end value under a schedule)", ge=0, says="a number ≥ 0")
        kl_schedule: dict = setting(
            {"name": "constant"}, "beta(t) over training (the kl_schedule group)", belongs="needs model=beta_vae"
        )
        free_bits: float = setting(
            0.0, "nats per latent below which the KL is not pushed", ge=0, unit=" nats", belongs="needs model=beta_vae"
        )

    def __init__(
        self,
        *args,
        beta: float = Settings.default("beta"),
        kl_schedule: dict = Settings.default("kl_schedule"),  # noqa: B008 (copied below, never mutated)
        free_bits: float = Settings.default("free_bits"),
        **kwargs,
    ):
        super().__init__(*args, beta=beta, **kwargs)
        self.kl_schedule_spec = dict(kl_schedule)
        self.free_bits = free_bits
        self._schedule = None

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        super().check_config(model_cfg, cfg)
        check_kl_schedule(model_cfg.kl_schedule, cfg)
        require(
            model_cfg.kl_schedule.name != "capacity" or not set_by_user(cfg, "model.beta", like=("_target_",)),
            "model.beta has no effect with kl_schedule=capacity, whose KL weight is kl_schedule.gamma; "
            "drop model.beta or set kl_schedule.gamma=<weight>",
        )
        require(
            model_cfg.free_bits == 0 or model_cfg.posterior == "diagonal",
            "model.free_bits needs model.posterior=diagonal (a full-covariance KL does not split per dimension)",
        )
        require(
            model_cfg.free_bits == 0 or prior_class(model_cfg.get("prior")).closed_form,
            "model.free_bits needs model/prior=standard (a learned prior's KL per dimension is a noisy estimate)",
        )

    def on_train_start(self) -> None:
        super().on_train_start()
        # Built here: before training (Lightning's sanity check) the number of steps an epoch
        # is unknown, and a schedule given in epochs built then would run in steps.
        self._schedule = build_kl_schedule(self.kl_schedule_spec, self.beta, self.optimizer_steps_per_epoch())

    @property
    def schedule(self) -> Callable[[int], tuple[float, float | None]]:
        """The KL schedule of this run. Outside training (the sanity check before it, a loaded
        checkpoint) it is only needed at the step the model is at; a length given in epochs is
        then read from the trainer if it knows the epoch's length."""
        if self._schedule is not None:
            return self._schedule
        steps_per_epoch = self.optimizer_steps_per_epoch() if self._trainer is not None else None
        return build_kl_schedule(self.kl_schedule_spec, self.beta, steps_per_epoch or 1)

    @torch.compiler.disable
    def schedule_now(self, like: Tensor) -> tuple[Tensor, Tensor | None]:
        """(beta, capacity) at this step, as float32 tensors on ``like``'s device. Tensors, and
        outside the compiled graph (model.compile=true): a Python number that changes every step
        would make torch.compile compile the step again every step."""
        beta, capacity = self.schedule(self.global_step)
        beta = torch.tensor(beta, dtype=torch.float32, device=like.device)
        if capacity is not None:
            capacity = torch.tensor(capacity, dtype=torch.float32, device=like.device)
        return beta, capacity

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        terms = self.terms(x)
        beta, capacity = self.schedule_now(terms["kl"])
        kl = terms["kl"].mean()
        if self.free_bits > 0:
            kl = terms["kl_per_dim"].mean(0).clamp(min=self.free_bits).sum()
        kl_penalty = kl if capacity is None else (kl - capacity).abs()
        terms["loss"] = -terms["log_px_given_z"].mean() + beta * kl_penalty
        terms["beta"] = beta
        if capacity is not None:
            terms["capacity"] = capacity
        return terms
