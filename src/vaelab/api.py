"""vaelab from Python: the objects the command line uses, for notebooks and scripts.

    import vaelab

    run = vaelab.train(["model=beta_vae", "model.beta=4", "trainer.max_epochs=5"])
    model, data = vaelab.load(run.run_dir)          # a run folder, a .ckpt, or a results/ file
    mean, scale = model.encode(x)                    # q(z|x): deterministic
    x_hat = model.decode(mean)
    samples = model.sample(16)
    log_px = model.log_likelihood(x, k=1000)        # importance-sampled log p(x), nats, [B]

``train`` takes the overrides ``python train.py`` takes and returns the metrics it printed and
the run folder; ``load`` returns the model in eval mode and its data module (``data=False`` to
skip reading the data set)."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from omegaconf import OmegaConf

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vaelab.data.in_memory import InMemoryDataModule
    from vaelab.models.base import GenerativeModel


class Run(NamedTuple):
    """What ``vaelab.train`` returns: the last value of every metric, and the run's folder."""

    metrics: dict[str, float]
    run_dir: Path


class Loaded(NamedTuple):
    """What ``vaelab.load`` returns: the model in eval mode, and its data module (or None)."""

    model: GenerativeModel
    data: InMemoryDataModule | None


def train(overrides: Sequence[str] = (), run_dir: str | Path | None = None) -> Run:
    """Train as ``python train.py *overrides`` would, into ``run_dir`` (default: a new folder
    under outputs/train/runs/, as the command line's)."""
    from vaelab.config import compose_config
    from vaelab.training import train as train_config

    if run_dir is None:
        run_dir = Path("outputs/train/runs") / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    from vaelab import app

    cfg = compose_config(list(overrides), run_dir)
    app.given_overrides[:] = overrides  # what the checks that read the command line see
    try:
        return Run(train_config(cfg), Path(run_dir))
    finally:
        app.given_overrides.clear()


def load(path: str | Path, data: bool = True) -> Loaded:
    """The model of a run folder (its checkpoints/best.ckpt), of a checkpoint, or of a weights-only
    file under results/, in eval mode on the CPU, with the data module it was trained on, read
    and split as in training (``data=False``: None)."""
    from vaelab.building import instantiate_plain
    from vaelab.checkpoints import load_checkpoint, model_from_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "best.ckpt"
    checkpoint = load_checkpoint(str(path))
    model = model_from_checkpoint(checkpoint).eval()
    if not data:
        return Loaded(model, None)
    data_cfg = OmegaConf.create(checkpoint["vaelab"]["config"]["data"])
    data_cfg.overfit_batches = 0
    datamodule = instantiate_plain(data_cfg)
    datamodule.prepare()
    return Loaded(model, datamodule)
