"""Callbacks that write what a person looks at: image grids every validation epoch, learning
curves at the end of training, and the disentanglement scores on data with ground-truth factors."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import lightning.pytorch.callbacks
import torch
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from pydantic import model_validator
from torchvision.utils import save_image

from vaelab.checks import require
from vaelab.curves import draw_curves, write_curves
from vaelab.models.base import CodebookModel, LatentVariableModel
from vaelab.pictures import grid as image_grid
from vaelab.settings import Settings, setting

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lightning.pytorch.loggers import Logger

    from vaelab.data.in_memory import InMemoryDataModule


class ImageGrids(L.Callback):
    """After each validation epoch, rank 0 saves two PNG grids under ``<run>/images/`` and sends
    them to the active loggers: fixed validation inputs beside their reconstructions, and
    samples decoded from fixed prior draws (the same draws every epoch, so progress shows).
    Small images are enlarged in the grids as in ``eval.py``'s (``vaelab.pictures.grid``)."""

    class Settings(Settings):
        dirpath: str = setting(..., "the folder of the PNG grids")
        # Half of num_images are inputs shown beside their reconstructions.
        num_images: int = setting(64, "images in each grid", ge=2)
        every_n_epochs: int = setting(1, "draw every this many validation epochs", ge=1)

    def __init__(
        self,
        dirpath: str,
        num_images: int = Settings.default("num_images"),
        every_n_epochs: int = Settings.default("every_n_epochs"),
    ):
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.draws = getattr(trainer.datamodule, "is_images", True)
        if not self.draws:
            rank_zero_info("image grids: skipped, the data are vectors, not images")

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.draws:
            return
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or epoch % self.every_n_epochs:
            return
        val = trainer.datamodule.splits["val"]
        x = val.unit(self.num_images // 2).to(pl_module.device)
        recon = pl_module.reconstruct(x, **pl_module.given(val.labels[: len(x)].to(pl_module.device)))
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # input, reconstruction, input, ...
        samples = pl_module.sample(self.num_images, generator=torch.Generator().manual_seed(0))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for name, images in (("reconstructions", pairs), ("samples", samples)):
            grid = image_grid(images, nrow=8)
            save_image(grid, self.dirpath / f"{name}_epoch{epoch:03d}.png")
            log_image(trainer.loggers, f"images/{name}", grid, trainer.global_step)
        if isinstance(pl_module, CodebookModel) and pl_module.vq is pl_module:  # a prior's codebook is frozen
            quantizer = pl_module.quantizer
            path = self.dirpath / f"codebook_usage_epoch{epoch:03d}.png"
            usage_histogram(quantizer.usage.cpu(), quantizer.dead_threshold, path)
            log_image(trainer.loggers, "images/codebook_usage", read_png(path), trainer.global_step)


class LearningCurves(L.Callback):
    """The run's curves for a reader without W&B or TensorBoard: each epoch's training means (what
    ``train/<name>_epoch`` logs) and each validation (``val/<name>``) of ``metrics``, against the
    epochs trained (a validation in the middle of an epoch at its fraction). At the end of training
    rank 0 writes them to ``<run>/curves.csv`` and draws them into ``<run>/images/curves.png``, one
    panel per metric. The history is in every checkpoint, so a resumed run's curves start at epoch 1.

    The training means are taken at the epoch's last validation or, in an epoch without one, at its
    end, from the loop's epoch sums: the numbers the loop logs, but in time for the checkpoint that
    validation writes."""

    class Settings(Settings):
        dirpath: str = setting(..., "the run folder: curves.csv there, curves.png under images/")
        metrics: list[str] = setting(["loss", "elbo", "kl"], "the logged metrics drawn, a panel each", min_length=1)

    def __init__(self, dirpath: str, metrics: Iterable[str] = tuple(Settings.default("metrics"))):
        self.dirpath = Path(dirpath)
        self.metrics = list(metrics)
        self.rows: list[dict] = []  # {"split", "epoch", <metric>: value}

    def state_dict(self) -> dict:
        return {"rows": self.rows}

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])

    def _record(self, split: str, epoch: float, values: dict) -> None:
        row = {name: float(values[name]) for name in self.metrics if name in values}
        if row:
            self.rows.append({"split": split, "epoch": epoch, **row})

    def _record_train(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if any(r["split"] == "train" and r["epoch"] == epoch for r in self.rows):
            return
        self._record("train", epoch, pl_module.train_epoch_means())

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        epoch = trainer.current_epoch + done / max(1, trainer.num_training_batches)
        metrics = trainer.callback_metrics
        self._record("val", epoch, {n: metrics[f"val/{n}"] for n in self.metrics if f"val/{n}" in metrics})
        if done >= trainer.num_training_batches:
            self._record_train(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record_train(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.rows:
            write_curves(self.rows, self.metrics, self.dirpath / "curves.csv")
            draw_curves({"train": self.rows}, self.metrics, self.dirpath / "images" / "curves.png")


def usage_histogram(usage: torch.Tensor, dead_threshold: float, path: Path) -> None:
    """Bar chart of each code's usage (1 = a fair share of the vectors), sorted, with the dead line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.5))
    ax.bar(range(len(usage)), usage.sort(descending=True).values.numpy(), width=1.0)
    ax.axhline(dead_threshold, color="red", linewidth=0.8, label=f"dead below {dead_threshold}")
    dead = int((usage < dead_threshold).sum())
    ax.set(
        xlabel="code (sorted by usage)",
        ylabel="usage",
        yscale="log",
        title=f"codebook usage: {len(usage) - dead} of {len(usage)} codes alive",
    )
    # A dead code's average decays towards 0 without bound; a floor keeps the live codes readable.
    ax.set_ylim(bottom=dead_threshold / 100)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_png(path: Path) -> torch.Tensor:
    from torchvision.io import ImageReadMode, read_image

    return read_image(str(path), mode=ImageReadMode.RGB).float() / 255


def log_image(loggers: Iterable[Logger], key: str, grid: torch.Tensor, step: int) -> None:
    """Send an image grid [3, H, W] in [0, 1] to the loggers that take images (W&B, TensorBoard,
    MLflow)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, step)
        elif isinstance(logger, MLFlowLogger):
            pixels = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            logger.experiment.log_image(logger.run_id, pixels, key=key, step=step)


class LearningRateMonitor(lightning.pytorch.callbacks.LearningRateMonitor):
    """Lightning's monitor, logging a per-step schedule's rate once per optimizer step: at the first
    batch of each gradient-accumulation group, where the logged step is the optimizer steps done and
    the rate is the one that group trains with (Lightning's would log it at every batch)."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any, **kwargs: Any) -> None:
        batch_idx = args[1] if len(args) > 1 else kwargs.get("batch_idx", 0)
        if pl_module.accumulation_group(batch_idx)[0] == batch_idx:  # config.py admits loop models only
            super().on_train_batch_start(trainer, pl_module, *args, **kwargs)


class EncoderGradientVariance(L.Callback):
    """Every ``every_n_epochs`` training epochs, the variance of the encoder's gradient estimate
    over ``num_draws`` draws on a fixed training batch, logged as ``diag/encoder_grad_variance``
    (and ``diag/encoder_grad_snr``); ``num_draws: 0`` turns it off. Compares gradient estimators
    (``model.estimator``) on the same model. The batch is the data as the model trains on it
    (see ``training_batch``)."""

    class Settings(Settings):
        num_draws: int = setting(
            0,
            "gradient draws per measurement; 0: off",
            ge=0,
            message="{key} must be 0 (off) or a whole number ≥ 2, got {value!r}; a variance needs two draws",
        )
        batch_size: int = setting(100, "the fixed training batch the gradients are drawn on", ge=1)
        every_n_epochs: int = setting(1, "measure every this many training epochs", ge=1)

        @model_validator(mode="after")
        def two_draws_for_a_variance(self) -> EncoderGradientVariance.Settings:
            if self.num_draws == 1:
                raise ValueError(
                    "callbacks.encoder_gradient_variance.num_draws must be 0 (off) or a whole number ≥ 2, got 1; "
                    "a variance needs two draws"
                )
            return self

    def __init__(
        self,
        num_draws: int = Settings.default("num_draws"),
        batch_size: int = Settings.default("batch_size"),
        every_n_epochs: int = Settings.default("every_n_epochs"),
    ):
        self.num_draws, self.batch_size, self.every_n_epochs = num_draws, batch_size, every_n_epochs
        self.active = num_draws > 0  # when off, train() leaves it out (see build_callbacks)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before any training (vaelab.config refuses it earlier for a run from a config).
        require(
            isinstance(pl_module, LatentVariableModel),
            "callbacks.encoder_gradient_variance measures the encoder gradient of a model with q(z|x), and "
            f"{type(pl_module).__name__} has none; set callbacks.encoder_gradient_variance.num_draws=0",
        )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs:
            return
        from vaelab.diagnostics import encoder_gradient_samples, gradient_variance

        x = training_batch(trainer.datamodule, self.batch_size).to(pl_module.device)
        stats = gradient_variance(encoder_gradient_samples(pl_module, x, self.num_draws))
        pl_module.log_dict(
            {"diag/encoder_grad_variance": stats["grad_variance"], "diag/encoder_grad_snr": stats["snr"]}, on_epoch=True
        )


def training_batch(datamodule: InMemoryDataModule, n: int) -> torch.Tensor:
    """The first ``n`` training images as the model trains on them (binarized, or dequantized for a
    continuous likelihood: ``vaelab.data.in_memory``), with the same fixed noise every time (its
    own seed: the run's random stream is left as it was)."""
    from vaelab.data.in_memory import BatchRef

    dataset = datamodule.dataset("train", train=True)
    n = min(n, len(dataset))
    return dataset[BatchRef(torch.arange(n), 0, 0, n)][0].cpu()


class DisentanglementScores(L.Callback):
    """On data with ground-truth factors (the data module's ``ground_truth``, e.g. dSprites): the
    disentanglement scores of the posterior means (``vaelab.disentanglement``), logged as
    ``test/mig``, ``test/factor_vae``, ``test/dci_disentanglement``, ... in the test after fitting
    (so in test_metrics.json and in a sweep's report), and as ``val/...`` every ``every_n_epochs``
    validations (0: never). ``num_points``: MIG/DCI/SAP training points and FactorVAE training votes
    (half as many test points and evaluation votes); ``dci_points``: the subset DCI's trees learn
    from (their cost dominates).
    Every process computes the same numbers from the same seed."""

    class Settings(Settings):
        every_n_epochs: int = setting(0, "score every this many validations; 0: only in the test", ge=0)
        # Fewer points leave some factor value unsampled (MIG needs every factor to vary).
        num_points: int = setting(10_000, "MIG/DCI/SAP training points and FactorVAE training votes", ge=200)
        dci_points: int | None = setting(
            2_000,
            "the points DCI's trees learn from; null: all",
            ge=20,
            message="{key} must be null (all points) or a whole number ≥ 20, got {value!r}",
        )
        seed: int = setting(0, "the seed of the points and votes")

    def __init__(
        self,
        every_n_epochs: int = Settings.default("every_n_epochs"),
        num_points: int = Settings.default("num_points"),
        dci_points: int | None = Settings.default("dci_points"),
        seed: int = Settings.default("seed"),
    ):
        self.every_n_epochs, self.num_points, self.dci_points, self.seed = every_n_epochs, num_points, dci_points, seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Before any training: a run that asked for the scores must be able to get them.
        name = type(trainer.datamodule).__name__
        require(
            getattr(trainer.datamodule, "ground_truth", None) is not None,
            f"callbacks=[...,disentanglement] needs data with ground-truth factors (such as data=dsprites); "
            f"{name} has none: drop the callback",
        )
        self.check_model(type(pl_module))

    @staticmethod
    def check_model(model_class: type) -> None:
        """The model must have a posterior of x alone to score; checked by ``vaelab.config`` before
        anything is built, and again here when the run starts."""
        require(
            issubclass(model_class, LatentVariableModel),
            "callbacks=[...,disentanglement] scores the posterior means, and this model has no q(z|x) "
            "(a VQ-VAE): drop the callback",
        )
        require(
            not model_class.conditional,
            "callbacks=[...,disentanglement] scores a representation of x alone, and model=cvae's q(z|x, y) is "
            "given the labels: drop the callback",
        )

    def scores(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        from vaelab.disentanglement import dequantize_levels, disentanglement_metrics, posterior_means

        return disentanglement_metrics(
            trainer.datamodule.ground_truth,
            posterior_means(pl_module, dequantize_levels=dequantize_levels(trainer.datamodule)),
            seed=self.seed,
            num_train=self.num_points,
            num_test=self.num_points // 2,
            num_variance_estimate=self.num_points,
            num_votes_train=self.num_points,
            num_votes_eval=self.num_points // 2,
            dci_points=self.dci_points,
        )

    def log_scores(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        scores = self.scores(trainer, pl_module)
        pl_module.log_dict({f"{stage}/{name}": float(value) for name, value in scores.items()}, on_epoch=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every = self.every_n_epochs
        if every and not trainer.sanity_checking and (trainer.current_epoch + 1) % every == 0:
            self.log_scores("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_scores("test", trainer, pl_module)
