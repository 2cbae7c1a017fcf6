"""dSprites (Matthey et al. 2017): 2-D shapes on a grid of known factors, the benchmark of the
beta-VAE and of disentanglement metrics.

``data=dsprites`` is the full grid: shape (square, ellipse, heart) x scale (6, from 0.5 to 1) x
orientation (40 over [0, 2 pi)) x pos_x (32 over [0, 1]) x pos_y (32 over [0, 1], moving the shape
down the image) = 737,280 binary 64x64 images. They are drawn procedurally from the factor indices
(``vaelab.data.factors.DSpritesFactors``): no download, deterministic. It is a re-drawing with the
same factors, **not** pixel-identical to DeepMind's file: the shapes' outlines and sizes, the range
of positions, and the orientations (DeepMind's 40 run from 0 to 2 pi inclusive, so the first and the
last are the same angle; here they are 2 pi k / 40) differ. ``data.path`` pointing at DeepMind's
``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` reads their images instead (``imgs``,
``latents_classes`` minus its constant colour column as the factors).

``data=dsprites_small`` is the same drawing on a coarser grid for CPU budgets: 32x32 images,
20 orientations, 16 positions per axis: 3 x 6 x 20 x 16 x 16 = 92,160 images.

Labels are the factor indices, [N, 5] int64 (shape, scale, orientation, pos_x, pos_y); the data
module's ``ground_truth`` gives the factors to the disentanglement metrics (``GroundTruth``).

Drawn once, or per batch (``data.draw``). The whole grid as uint8 is 2.81 GiB and takes seconds
to draw at every start (every run of a sweep, every evaluation), while drawing a batch costs a few
percent of a training step (docs/measurements.md, "Drawing dSprites"). So ``data=dsprites`` draws
per batch (``draw: per_batch``): a split holds only its factor indices (40 bytes an image) and a
batch is drawn, vectorised, when it is cut; with ``data.on_device=true`` it is drawn on the GPU.
The small grid is 90 MiB: ``data=dsprites_small`` draws once (``draw: once``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor

from vaelab.checks import set_by_user
from vaelab.data.factors import DSPRITES_FACTORS, DSpritesFactors, FactorGrid, TabulatedFactors
from vaelab.data.in_memory import InMemoryDataModule, Split
from vaelab.errors import UserError
from vaelab.settings import setting

if TYPE_CHECKING:
    from omegaconf import DictConfig

DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
DRAW_MODES = ("per_batch", "once")


class DrawnImages:
    """A split's images drawn from its factor indices when asked for: stands for the uint8
    [N, C, H, W] tensor of a ``Split`` where the batches are cut (``index_select``, slices,
    ``.to(device)``, ``shape``) without holding the pixels."""

    dtype = torch.uint8

    def __init__(self, factors: Tensor, source: FactorGrid):
        self.factors, self.source = factors, source
        self.image_shape = tuple(source.image_shape)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.factors), *self.image_shape))

    @property
    def device(self) -> torch.device:
        return self.factors.device

    @property
    def ndim(self) -> int:
        return 1 + len(self.image_shape)

    def __len__(self) -> int:
        return len(self.factors)

    def index_select(self, dim: int, index: Tensor) -> Tensor:
        if dim != 0:
            raise ValueError("drawn images are selected along the first dimension only")
        return self.source.draw(self.factors.index_select(0, index))

    def __getitem__(self, key: int | slice | Tensor) -> Tensor:
        if isinstance(key, int):
            return self.source.draw(self.factors[key : key + 1 or None])[0]
        return self.source.draw(self.factors[key])

    def to(self, device: torch.device | str, *args, **kwargs) -> DrawnImages:
        device = torch.device(device)
        self.source.keep_on(device)
        return DrawnImages(self.factors.to(device), self.source)


def read_dsprites_npz(path: Path) -> tuple[Tensor, Tensor]:
    """DeepMind's ``.npz``: ``imgs`` [N, 64, 64] uint8 in {0, 1} and ``latents_classes`` [N, 6]
    integers, the first column the colour (one value). Returns the images [N, 1, H, W] uint8 (the
    file's memory, not a copy) and the factor indices [N, 5] int64 (the colour dropped)."""
    try:
        with np.load(path) as data:
            missing = [key for key in ("imgs", "latents_classes") if key not in data.files]
            if missing:
                raise UserError(
                    f"{path} has no array {missing[0]!r} (it has {', '.join(data.files) or 'none'}): "
                    f"expected DeepMind's {DSPRITES_FILE} with imgs and latents_classes"
                )
            imgs, classes = data["imgs"], data["latents_classes"]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path} is not a readable .npz ({e}); download or copy it again") from None
    if imgs.ndim != 3 or imgs.dtype not in (np.uint8, np.bool_):
        raise UserError(f"{path}: imgs is {imgs.dtype} of shape {imgs.shape}, expected uint8 of shape (N, 64, 64)")
    if classes.ndim != 2 or classes.shape[1] != 6 or not np.issubdtype(classes.dtype, np.integer):
        raise UserError(
            f"{path}: latents_classes is {classes.dtype} of shape {classes.shape}, expected integers of shape "
            "(N, 6): colour, shape, scale, orientation, pos_x, pos_y"
        )
    if len(classes) != len(imgs) or len(imgs) == 0:
        raise UserError(f"{path} has {len(imgs)} images but {len(classes)} rows of latents_classes; expected as many")
    if classes.min() < 0 or (classes[:, 0] != classes[0, 0]).any():
        raise UserError(
            f"{path}: latents_classes must be indices ≥ 0 with one colour (column 0); this is not the dSprites file"
        )
    if imgs.max() > 1:
        raise UserError(f"{path}: imgs takes values up to {imgs.max()}, expected binary images (0 and 1)")
    images = torch.from_numpy(imgs.view(np.uint8)).unsqueeze(1)
    return images, torch.from_numpy(classes[:, 1:].astype(np.int64))


class DSpritesDataModule(InMemoryDataModule):
    """dSprites (module docstring): drawn on a grid of ``num_scales`` x ``num_orientations`` x
    ``num_positions``^2 factors, or read from DeepMind's file at ``path`` (which then sets the grid).
    A fixed split (seeded by ``split_seed``, not the run's seed, so runs of any seed are evaluated on
    the same images): ``val_size`` and ``test_size`` images, the rest for training.
    ``draw``: ``per_batch`` (draw each batch when it is cut) or ``once`` (draw every image at the
    start); DeepMind's file is read once whatever ``draw`` says. ``ground_truth`` (a
    ``vaelab.data.factors.GroundTruth``) serves the disentanglement metrics."""

    name = "dsprites"
    path_is_needed = False  # without a file, the images are drawn

    # The settings of the images it draws, which a file of DeepMind's images replaces.
    DRAWING_KEYS: ClassVar[dict[str, str]] = {
        "num_scales": "the file's factors make the grid",
        "num_orientations": "the file's factors make the grid",
        "num_positions": "the file's factors make the grid",
        "draw": "the file's images are read, not drawn",
    }

    class Settings(InMemoryDataModule.Settings):
        path: str | None = setting(None, "null: draw the images; or DeepMind's .npz (its factors set the grid)")
        num_scales: int = setting(6, "scales, linearly from 0.5 to 1", ge=1)
        num_orientations: int = setting(40, "orientations 2 pi k / n over [0, 2 pi)", ge=1)
        num_positions: int = setting(32, "positions per axis over [0, 1]", ge=1)
        val_size: int = setting(10000, "validation images", ge=1)
        test_size: int = setting(10000, "test images (the rest train)", ge=1)
        split_seed: int = setting(0, "the split's seed: fixed, so runs of every seed are evaluated alike")
        draw: Literal[DRAW_MODES] = setting("per_batch", "per_batch: each batch drawn when cut; once: all at the start")

    @classmethod
    def check_config(cls, data: DictConfig, cfg: DictConfig | None = None) -> None:
        super().check_config(data, cfg)
        if data.get("path") is None or cfg is None:
            return
        for key, reason in cls.DRAWING_KEYS.items():
            if set_by_user(cfg, f"data.{key}", like=("_target_",)):
                raise UserError(
                    f"data.{key} has no effect with data.path set: {reason}; drop data.{key}, "
                    "or set data.path=null to draw the images"
                )

    def __init__(
        self,
        path: str | None = Settings.default("path"),
        num_scales: int = Settings.default("num_scales"),
        num_orientations: int = Settings.default("num_orientations"),
        num_positions: int = Settings.default("num_positions"),
        val_size: int = Settings.default("val_size"),
        test_size: int = Settings.default("test_size"),
        split_seed: int = Settings.default("split_seed"),
        draw: str = Settings.default("draw"),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.path = Path(path).expanduser() if path else None
        self.val_size, self.test_size, self.split_seed, self.draw = val_size, test_size, split_seed, draw
        if self.path is not None:
            if not self.path.is_file():
                raise UserError(
                    f"data.path={self.path} does not exist; point it at DeepMind's {DSPRITES_FILE}, "
                    "or set data.path=null to draw the images"
                )
            self._ground_truth: FactorGrid | None = None  # read with the file
            return
        channels, height, width = self.image_shape
        if channels != 1 or height != width or height < 8:
            raise UserError(
                f"data.image_shape must be [1, S, S] with S ≥ 8 for drawn dSprites, got {list(self.image_shape)}"
            )
        self._ground_truth = DSpritesFactors(height, num_scales, num_orientations, num_positions)

    @property
    def ground_truth(self) -> FactorGrid:
        """The factors and their images (``GroundTruth``). Drawn dSprites have it from the start;
        DeepMind's file, once read (``prepare``/``setup``), if it holds the whole grid."""
        if self._ground_truth is None:
            self.prepare()
        truth = self._ground_truth
        if isinstance(truth, TabulatedFactors) and not truth.complete:
            raise UserError(
                f"{self.path} holds {int((truth.row_of >= 0).sum())} of the {len(truth)} images of its factor grid "
                f"{truth.factor_sizes}; the disentanglement metrics sample the whole grid: use the complete file"
            )
        return truth

    def load(self) -> dict[str, Split]:
        if self.path is not None:
            images, file_factors = read_dsprites_npz(self.path)
            source = TabulatedFactors(images, file_factors, DSPRITES_FACTORS, source=str(self.path))
            self._ground_truth = source
        else:
            source = self._ground_truth
        n = len(file_factors) if self.path is not None else len(source)
        if self.val_size + self.test_size >= n:
            raise UserError(
                f"data.val_size={self.val_size} and data.test_size={self.test_size} leave none of the {n} images "
                "to train on; lower them"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        factors = file_factors[order] if self.path is not None else source.factors_of(order)
        sizes = {"train": n - self.val_size - self.test_size, "val": self.val_size, "test": self.test_size}
        splits, start = {}, 0
        for name, size in sizes.items():
            part = factors[start : start + size]
            start += size
            if self.draw == "once" and self.path is None:
                images = source.draw(part)
            else:
                images = DrawnImages(part, source)
            splits[name] = Split(images, part, levels=1)
        return splits

    def fixed_eval_split(self, split: str) -> Split:
        # Binary images: a Bernoulli draw of 0/1 pixels is the pixels themselves.
        return self.splits[split]
