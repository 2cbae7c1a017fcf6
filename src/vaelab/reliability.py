"""What keeps a run's work safe: checkpoints that cannot be half-written and a checkpoint on
pre-emption signals. (The stop or skip on non-finite numbers is the models' own guard, in
``models/base.py``.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO


class TrainingStopped(Exception):
    """Training stopped on purpose (non-finite numbers, a pre-emption signal); the message says
    why, where and how to go on."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary name in the same folder, then renames it: a crash while
    saving leaves the previous file complete, so ``last.ckpt`` is always loadable."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, path)


class PreemptionCheckpoint(L.Callback):
    """On SIGTERM or SIGUSR1 (how SLURM and most schedulers announce pre-emption), finishes the
    current step, saves ``<dirpath>/last.ckpt`` and stops with a message naming the resume command."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self, dirpath: str):
        self.dirpath = Path(dirpath)
        self.received: int | None = None
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        for sig in self.SIGNALS:  # installed after Lightning's own handlers, so these take over
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.received is None:
            return
        path = self.dirpath / "last.ckpt"
        trainer.save_checkpoint(path)
        name = signal.Signals(self.received).name
        raise TrainingStopped(f"received {name} at step {trainer.global_step}: saved {path}; resume with "
                              f"python train.py hydra.run.dir={self.dirpath.parent} ckpt_path=last")

    def teardown(self, trainer, pl_module, stage) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
