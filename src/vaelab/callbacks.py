"""Callbacks that write what a person looks at: image grids every validation epoch."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from torchvision.utils import save_image

from vaelab.pictures import grid as image_grid


class ImageGrids(L.Callback):
    """After each validation epoch, rank 0 saves two PNG grids under ``<run>/images/`` and sends
    them to the active loggers: fixed validation inputs beside their reconstructions, and
    samples decoded from fixed prior draws (the same draws every epoch, so progress shows).
    Small images are enlarged in the grids as in ``eval.py``'s (``vaelab.pictures.grid``)."""

    def __init__(self, dirpath: str, num_images: int = 64, every_n_epochs: int = 1):
        self.dirpath = Path(dirpath)
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not trainer.is_global_zero or epoch % self.every_n_epochs:
            return
        val = trainer.datamodule.splits["val"]
        x = (val.images[: self.num_images // 2].float() / val.levels).to(pl_module.device)
        recon = pl_module.reconstruct(x)
        pairs = torch.stack([x, recon], dim=1).flatten(0, 1)  # input, reconstruction, input, ...
        samples = pl_module.sample(self.num_images, generator=torch.Generator().manual_seed(0))
        self.dirpath.mkdir(parents=True, exist_ok=True)
        for name, images in (("reconstructions", pairs), ("samples", samples)):
            grid = image_grid(images, nrow=8)
            save_image(grid, self.dirpath / f"{name}_epoch{epoch:03d}.png")
            log_image(trainer.loggers, f"images/{name}", grid, trainer.global_step)
        quantizer = getattr(pl_module, "quantizer", None)
        if quantizer is not None:
            path = self.dirpath / f"codebook_usage_epoch{epoch:03d}.png"
            usage_histogram(quantizer.usage.cpu(), quantizer.dead_threshold, path)
            log_image(trainer.loggers, "images/codebook_usage", read_png(path), trainer.global_step)


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


def log_image(loggers, key: str, grid: torch.Tensor, step: int) -> None:
    """Send an image grid to the loggers that take images (W&B, TensorBoard)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[grid], step=step)
        elif isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, grid, step)


class EncoderGradientVariance(L.Callback):
    """Every ``every_n_epochs`` training epochs, the variance of the encoder's gradient estimate
    over ``num_draws`` draws on a fixed training batch, logged as ``diag/encoder_grad_variance``
    (and ``diag/encoder_grad_snr``); ``num_draws: 0`` turns it off. Compares gradient estimators
    (``model.estimator``) on the same model. The batch is the data as the model trains on it
    (see ``training_batch``)."""

    def __init__(self, num_draws: int = 0, batch_size: int = 100, every_n_epochs: int = 1):
        self.num_draws, self.batch_size, self.every_n_epochs = num_draws, batch_size, every_n_epochs
        self.active = num_draws > 0  # when off, train() leaves it out (see build_callbacks)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch % self.every_n_epochs:
            return
        from vaelab.diagnostics import encoder_gradient_samples, gradient_variance

        x = training_batch(trainer.datamodule, self.batch_size).to(pl_module.device)
        stats = gradient_variance(encoder_gradient_samples(pl_module, x, self.num_draws))
        pl_module.log_dict(
            {"diag/encoder_grad_variance": stats["grad_variance"], "diag/encoder_grad_snr": stats["snr"]}, on_epoch=True
        )


def training_batch(datamodule, n: int) -> torch.Tensor:
    """The first ``n`` training images as the model trains on them (binarized, or dequantized for a
    continuous likelihood: ``vaelab.data.in_memory``), with the same fixed noise every time (its
    own seed: the run's random stream is left as it was)."""
    from vaelab.data.in_memory import BatchRef

    dataset = datamodule.dataset("train", train=True)
    n = min(n, len(dataset))
    return dataset[BatchRef(torch.arange(n), 0, 0, n)][0].cpu()
