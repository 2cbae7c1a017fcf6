"""What keeps a run's work safe and repeatable: random streams that are a function of where the
run is, checkpoints that cannot be half-written and a checkpoint on pre-emption signals. (The stop
or skip on non-finite numbers is the models' own guard, in ``models/base.py``.)"""

from __future__ import annotations

import os
import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vaelab import app
from vaelab.data.in_memory import derive_seed

if TYPE_CHECKING:
    from types import FrameType

# Stream names for derive_seed (the data's own streams are 0-3, in vaelab.data.in_memory).
MODEL_TRAIN_NOISE, MODEL_EVAL_NOISE = 10, 11


class TrainingStopped(Exception):
    """Training stopped on purpose (non-finite numbers, a pre-emption signal); the message says
    why, where and how to go on."""


def seed_generators(seed: int) -> None:
    """Seeds the CPU generator and, once CUDA is in use, every GPU's. (``torch.manual_seed`` does
    the same but asks about every device kind each time, a cost a small model's step feels.)"""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


class RandomStreams(L.Callback):
    """Seeds the generators (CPU and every GPU, ``seed_generators``) before each batch
    from (seed, epoch, batch, process rank). So each DDP process draws its own noise (the
    reparameterization samples), a resumed run draws exactly what the uninterrupted run drew,
    with no generator state to save, and every validation draws the same noise (epochs compare
    on equal terms). The data's noise has streams of its own (``vaelab.data.in_memory``)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        seed_generators(
            derive_seed(MODEL_TRAIN_NOISE, self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        )

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        seed_generators(derive_seed(MODEL_EVAL_NOISE, self.seed, batch_idx, trainer.global_rank))

    on_test_batch_start = on_validation_batch_start


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary name in the same folder, then renames it: a crash while
    saving leaves the previous file complete, so ``last.ckpt`` is always loadable."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Path | str, storage_options: Any | None = None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or SIGUSR1 (how SLURM and most schedulers announce pre-emption), finishes the
    current step (the optimizer step of a gradient-accumulation group; at an epoch's last batch, the
    epoch and the next step), saves ``<dirpath>/last.ckpt`` and stops with a message naming the
    resume command; under DDP every process stops at the same step. Resuming from it continues the
    epoch where it stopped (``data.in_memory.TrainLoader``)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.received: int | None = None
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for sig in self.SIGNALS:  # installed after Lightning's own handlers, so these take over
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.received is None and trainer.world_size == 1:
            return  # the common case, at every step: nothing more to look at
        if batch_idx + 1 < sum(pl_module.accumulation_group(batch_idx)):  # config.py admits loop models only
            return  # inside a gradient-accumulation group: its gradients are in no checkpoint
        if batch_idx + 1 >= trainer.num_training_batches:
            # Lightning resumes a checkpoint of an epoch's last batch as a finished epoch, skipping
            # its validation and epoch end: the save waits for the next epoch's first step.
            return
        received = self.received is not None
        if trainer.world_size > 1:
            # Processes get the signal at different steps; all save at the same one (the checkpoint
            # is a collective), at the first step where any process has it.
            received = trainer.strategy.reduce_boolean_decision(received, all=False)
        if not received:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        name = signal.Signals(self.received or signal.SIGTERM).name
        # The run's own overrides (a sweep job's included), so that the command works as printed.
        own = [
            *app.search_path_overrides(),
            *(o for o in app.command_line_overrides() if not o.startswith("ckpt_path=")),
        ]
        command = shlex.join(["python", "train.py", *own, f"hydra.run.dir={self.dirpath.parent}", "ckpt_path=last"])
        raise TrainingStopped(f"received {name} at step {trainer.global_step}: saved {path}; resume with {command}")

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
