"""β-TCVAE (Chen et al. 2018, "Isolating Sources of Disentanglement in Variational Autoencoders")."""

from __future__ import annotations

from typing import Literal

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab import objectives
from vaelab.checks import require
from vaelab.errors import UserError
from vaelab.models.vae import VAE
from vaelab.settings import setting


class BetaTCVAE(VAE):
    """loss = recon + alpha * MI + beta * TC + gamma * dwKL: the KL term split into the index-code
    mutual information, the total correlation of the aggregate posterior q(z) and the KL of each
    of its marginals to the prior, each with its own weight (see ``vaelab.objectives``). alpha =
    beta = gamma = 1 is the VAE's loss with the KL estimated from the sample (its expectation is the
    closed-form KL). ``beta`` here weighs the total correlation only, not the whole KL as in
    ``BetaVAE``.

    The three terms need log q(z), a sum over the whole training set, estimated on each minibatch
    by ``sampling``: ``mws`` (minibatch-weighted) or ``mss`` (minibatch stratified); see
    ``objectives.aggregate_posterior_log_densities`` (MWS shifts the logged values by constants of
    log N). ``dataset_size`` is N, the training split's size; None reads it from the trainer's data
    module when training starts. It is kept in the checkpoint (buffer ``train_set_size``). Under DDP
    each process estimates log q(z) from its own share of the global batch, with N the whole
    training set: the estimates (not N) then depend on the number of processes, as they do on the
    batch size, and validation's, on ``data.eval_batch_size`` batches, differ from training's.

    Logged beside loss, recon and kl: ``mi``, ``tc``, ``dwkl`` (batch means, in nats). ``elbo`` is
    the true bound -(recon + kl) with the closed-form KL, whatever the weights."""

    reparameterized_only = True
    standard_prior_only = "splits its KL into terms that need a factorised N(0, I) prior"

    class Settings(VAE.Settings):
        alpha: float = setting(
            1.0,
            "the mutual information's weight",
            ge=0,
            says="a number ≥ 0",
            belongs="weighs the mutual information of model=beta_tcvae",
        )
        beta: float = setting(6.0, "the total correlation's weight", ge=0, says="a number ≥ 0")
        gamma: float = setting(
            1.0,
            "the dimension-wise KL's weight",
            ge=0,
            says="a number ≥ 0",
            belongs="weighs the dimension-wise KL of model=beta_tcvae",
        )
        sampling: Literal["mss", "mws"] = setting(
            "mss",
            "the estimator of q(z): stratified or minibatch-weighted",
            says="mws or mss",
            belongs="is the estimator of q(z) of model=beta_tcvae",
        )
        dataset_size: int | None = setting(
            None,
            "N, the training set's size; null: the training split's",
            ge=1,
            says="null (the training split's size) or a whole number ≥ 1",
            belongs="is the training set's size N of model=beta_tcvae",
        )

    def __init__(
        self,
        *args,
        alpha: float = Settings.default("alpha"),
        beta: float = Settings.default("beta"),
        gamma: float = Settings.default("gamma"),
        sampling: str = Settings.default("sampling"),
        dataset_size: int | None = Settings.default("dataset_size"),
        **kwargs,
    ):
        super().__init__(*args, beta=beta, **kwargs)
        self.alpha, self.gamma, self.sampling = alpha, gamma, sampling
        self.given_dataset_size = dataset_size
        self.dataset_size = dataset_size  # N once known
        # N travels with the weights, so a model loaded from a checkpoint estimates as it trained.
        self.register_buffer("train_set_size", torch.tensor(dataset_size or 0, dtype=torch.long))

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        super().check_config(model_cfg, cfg)
        require(
            model_cfg.posterior == "diagonal",
            "model=beta_tcvae needs model.posterior=diagonal (q(z) is estimated dimension by dimension)",
        )

    # ---- N, the training set's size ------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.given_dataset_size is None:
            self.dataset_size = self.dataset_size_from_data()
        self.train_set_size.fill_(self.dataset_size)
        largest = self.largest_batch_of_the_run() if self.sampling == "mss" else None
        if largest is not None:
            self.check_stratified_batches(largest, "data.batch_size or data.eval_batch_size")

    def largest_batch_of_the_run(self) -> int | None:
        """The most examples one process gets in a training, validation or test batch of this run
        (from the data module's own batch samplers: shares under DDP, folded last batches); None
        for a data module of another kind, whose batches the objective then checks one by one."""
        datamodule = self._trainer.datamodule
        if not hasattr(datamodule, "splits"):
            return None
        loaders = (datamodule.train_dataloader(), datamodule.val_dataloader(), datamodule.test_dataloader())
        return max(len(batch.indices) for loader in loaders for batch in loader.sampler)

    def check_stratified_batches(self, batch_size: int, what_to_lower: str) -> None:
        """Minibatch stratified sampling stratifies the N training examples over the B - 1 others of
        a batch: a batch can hold at most N + 1 examples."""
        n = self.known_dataset_size()
        if batch_size > n + 1:
            raise UserError(
                f"model.sampling=mss needs batches of at most N + 1 = {n + 1} examples (N: the training set's "
                f"size), but this run has a batch of {batch_size}; lower {what_to_lower}, or set model.sampling=mws"
            )

    def dataset_size_from_data(self) -> int:
        """The training split's size, from the trainer's data module (every process holds the whole
        split, so under DDP too this is the whole training set)."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        splits = getattr(datamodule, "splits", None) or {}
        if "train" not in splits:
            raise UserError(
                "model=beta_tcvae could not read the training set's size from the data module; "
                "set model.dataset_size=<N>"
            )
        return len(splits["train"])

    def known_dataset_size(self) -> int:
        """N: given, read at the start of training, or from a loaded checkpoint's buffer."""
        if self.dataset_size is None:
            saved = int(self.train_set_size)
            if saved == 0 and self._trainer is None:
                raise ValueError("BetaTCVAE needs the training set's size: pass dataset_size=N")
            self.dataset_size = saved or self.dataset_size_from_data()
        return self.dataset_size

    # ---- the objective --------------------------------------------------------------------
    def objective(self, x: Tensor) -> dict[str, Tensor]:
        q = self.posterior(x)
        z = q.rsample()
        log_px_given_z = self.likelihood.log_prob(x, self.decoder(z))
        kl_per_dim = q.kl_to_standard_normal_per_dim()
        kl = kl_per_dim.sum(-1)
        if self.sampling == "mss":
            self.check_stratified_batches(len(x), "the batch size")
        log_q = objectives.log_density_matrix(z, q.mu, q.logvar)  # [B, B, L]
        log_qz, log_prod_qzd = objectives.aggregate_posterior_log_densities(
            log_q, self.known_dataset_size(), self.sampling
        )
        parts = objectives.kl_decomposition(q.log_prob(z), log_qz, log_prod_qzd, self.prior.log_prob(z))
        penalty = self.alpha * parts["mi"] + self.beta * parts["tc"] + self.gamma * parts["dwkl"]
        return {
            "loss": (-log_px_given_z + penalty).mean(),
            "log_px_given_z": log_px_given_z,
            "kl": kl,
            "kl_per_dim": kl_per_dim,
            "elbo": objectives.elbo(log_px_given_z, kl),
            **parts,
        }
