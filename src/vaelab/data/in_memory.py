"""In-memory data: every split is one uint8 tensor [N, C, H, W], decoded once, and a batch is
one tensor index (no per-sample Python work, no collate).

``batch_size`` is the *global* batch: under DDP with W processes each takes its 1/W share of
every global batch, so the optimisation is the same whatever the number of devices.

What the model sees: integers 0..levels as floats in [0, 1] for a Bernoulli likelihood (binarized
by a fresh draw when the data have grey levels), or, for a continuous likelihood, uniformly
dequantized values y = (x + u) / (levels + 1), u ~ U[0, 1): then -E_u[log p(y)] + D log(levels + 1)
bounds -log P(x) of the discrete data, so bits/dim are a bound comparable with papers.

The noise of a batch (binarization, dequantization) is drawn for the whole global batch from a
generator seeded by the run's seed, the epoch and the batch's number, and each process takes its
rows: the processes draw different noise, together the noise of one process, and a resumed run
draws the same noise as an uninterrupted one without any saved state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

import lightning as L
import numpy as np
import torch
from pydantic import PositiveInt, model_validator
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from vaelab.distributions import LIKELIHOODS
from vaelab.errors import UserError
from vaelab.settings import Settings, not_a_setting, setting, validate

if TYPE_CHECKING:
    from collections.abc import Sequence

    from omegaconf import DictConfig


@dataclass
class Split:
    """Images as integers 0..``levels`` ([N, C, H, W], uint8), or real numbers (float32) with
    ``levels`` None (continuous data), and labels ([N], -1 if none; or [N, F] factor indices, as
    dSprites has). ``images`` may also be an object that draws them when indexed
    (``vaelab.data.dsprites.DrawnImages``): batches are cut with ``index_select``, slices and
    ``.to(device)``, never by reading the whole tensor."""

    images: Tensor
    labels: Tensor
    levels: int | None

    def __len__(self) -> int:
        return self.images.shape[0]

    def unit(self, n: int) -> Tensor:
        """The first ``n`` examples without noise, for pictures: integers / levels in [0, 1];
        continuous data as they are."""
        x = self.images[:n].float()
        return x / self.levels if self.levels else x


def derive_seed(*keys: int) -> int:
    """A seed for the stream named by ``keys``: hashed (NumPy's SeedSequence), so nearby keys give
    unrelated streams; ``seed + epoch`` would make run 1's epoch e run 0's epoch e + 1."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


# Stream names for derive_seed: the data order, the training noise, and each evaluation split's noise.
ORDER, TRAIN_NOISE, VAL_NOISE, TEST_NOISE = 0, 1, 2, 3
SPLIT_NOISE = {"train": TRAIN_NOISE, "val": VAL_NOISE, "test": TEST_NOISE}


class BatchRef(NamedTuple):
    """One process's share of a global batch: its ``indices`` and where they sit in the global
    batch (``offset`` of ``global_size`` rows), and the seed of the global batch's noise."""

    indices: Tensor
    noise_seed: int
    offset: int
    global_size: int


class BatchDataset(Dataset):
    """Indexed by a ``BatchRef``: returns the batch (x, y) in one go, as the model sees it (see the
    module docstring): binarized when ``binarize``, dequantized when ``dequantize``."""

    def __init__(self, split: Split, binarize: bool, dequantize: bool = False):
        self.split = split
        self.binarize, self.dequantize = binarize, dequantize

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, ref: BatchRef) -> tuple[Tensor, Tensor]:
        # The data may live on the GPU (data.on_device).
        device = self.split.images.device
        indices = ref.indices.to(device)
        # index_select, not x[indices]: much faster on a CPU for a batch of rows.
        x = self.split.images.index_select(0, indices).float()
        if self.split.levels is None:  # continuous data (data=tensors of floats): as they are
            return x, self.split.labels.index_select(0, indices)
        if self.binarize or self.dequantize:
            g = torch.Generator(device=device).manual_seed(ref.noise_seed)
            u = torch.rand(ref.global_size, *x.shape[1:], generator=g, device=device)[ref.offset : ref.offset + len(x)]
        if self.dequantize:
            x = x.add_(u).div_(self.split.levels + 1)
        else:
            if self.split.levels != 1:
                x.div_(self.split.levels)
            if self.binarize:  # dynamic binarization: a fresh Bernoulli draw every time x is seen
                x = (u < x).float()
        return x, self.split.labels.index_select(0, indices)


class ShardedBatchSampler(Sampler):
    """Yields this process's share of each global batch as a ``BatchRef``.

    The order is a seeded permutation per epoch (``set_epoch``), identical on every process,
    so the processes together see exactly the batches a single process would (but for an
    evaluation split's last batch when it has fewer rows than processes: it joins the batch
    before it, so that no process is left without a step). ``noise`` names
    the noise stream: the training noise changes every epoch, an evaluation split's does not.
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        shuffle: bool,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        noise: int = TRAIN_NOISE,
    ):
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size, self.noise = seed, rank, world_size, noise
        self.epoch = 0
        self.skip_batches = 0  # of the next epoch's, trained before a mid-epoch resume (TrainLoader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_batches(self):
        if self.shuffle:
            order = torch.randperm(
                self.n, generator=torch.Generator().manual_seed(derive_seed(ORDER, self.seed, self.epoch))
            )
        else:
            order = torch.arange(self.n)
        stop = self.n - self.n % self.batch_size if self.drop_last else self.n
        batches = list(order[:stop].split(self.batch_size))
        if len(batches) > 1 and len(batches[-1]) < self.world_size:
            # A process left without rows would skip a step that the others' collectives (the
            # VQ-VAE's codebook statistics) wait for: fold the last few rows into the batch before.
            batches[-2:] = [torch.cat(batches[-2:])]
        return batches

    def noise_seed(self, batch_number: int) -> int:
        if self.noise == TRAIN_NOISE:
            return derive_seed(TRAIN_NOISE, self.seed, self.epoch, batch_number)
        return derive_seed(self.noise, batch_number)  # the same every epoch and for every run

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches, 0
        for number, batch in enumerate(self._global_batches()):
            if number < skip:
                continue  # its number stays: the later batches keep their noise seeds
            shares = batch.tensor_split(self.world_size)
            share = shares[self.rank]
            if len(share):
                offset = sum(len(s) for s in shares[: self.rank])
                yield BatchRef(share, self.noise_seed(number), offset, len(batch))

    def __len__(self) -> int:
        return sum(1 for b in self._global_batches() if len(b.tensor_split(self.world_size)[self.rank]))


class TrainLoader(DataLoader):
    """The training loader, resumable where an epoch was stopped: Lightning saves ``state_dict()``
    in every checkpoint and, on resume, calls ``load_state_dict``, so that a run stopped mid-epoch
    (a pre-emption signal) trains the rest of that epoch's batches, in their order and with their
    noise, instead of the epoch again from its start."""

    trainer: L.Trainer | None = None

    def state_dict(self) -> dict:
        """The number of this epoch's batches trained so far; 0 once the epoch's batches are all
        trained (with ``trainer.limit_train_batches`` that is fewer than the sampler's)."""
        trainer = self.trainer
        if trainer is None:
            return {"batches_done": 0}
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return {"batches_done": done if done < trainer.num_training_batches else 0}

    def load_state_dict(self, state: dict) -> None:
        done = int(state.get("batches_done", 0))
        self.sampler.skip_batches = done if done < len(self.sampler) else 0

    def __iter__(self):
        # Lightning creates a resumed run's first iterator before it sets the sampler's epoch, and a
        # loader with workers asks the sampler for indices as it is created: the epoch is set here.
        if self.trainer is not None:
            self.sampler.set_epoch(self.trainer.fit_loop.epoch_progress.current.processed)
        return super().__iter__()


BOTH_FLAGS = "data.on_device and data.pin_memory must be true or false"


class InMemoryDataModule(L.LightningDataModule):
    """Base for data sets held in memory. A subclass implements ``load`` and sets ``name``.

    binarize: ``auto`` (dynamic binarization when the likelihood is Bernoulli and the data
    has grey levels), ``dynamic`` or ``none``. A continuous likelihood always sees uniformly
    dequantized data (module docstring).
    overfit_batches: > 0 keeps only that many global batches of training images and validates and
    tests on those same images (``debug=overfit``): a working model drives its loss far down.
    num_levels: how many values a pixel takes (17 for digits, 256 for 8-bit images, 2 for binary
    ones); checked against the files, and the bits/dim offset of a continuous likelihood.
    on_device: move the splits to the training device once (a GPU), so batches are cut there.
    pin_memory, num_workers: passed to the DataLoader (for data kept on the host).
    """

    name = "data"
    is_images = True  # False for vectors (data=tensors [N, D]): no pictures of them
    path_is_needed = True  # a ``path`` setting must name the data (dSprites draws its own without one)
    may_be_continuous = False  # data=tensors of floats takes no number of levels

    class Settings(Settings):
        image_shape: list[PositiveInt] = setting(
            ...,
            "[channels, height, width] of the images",
            message="{key} must be [channels, height, width] of positive integers, got {value}",
        )
        batch_size: int = setting(..., "the global training batch (split across devices)", ge=1)
        eval_batch_size: int | None = setting(
            ...,
            "the validation and test batch; null: batch_size",
            ge=1,
            message="{key} must be a whole number ≥ 1, got {value!r}; set {key}=<N>",
        )
        binarize: Literal["auto", "dynamic", "none"] = setting(
            "auto", "auto: dynamic binarization when the likelihood is Bernoulli and pixels have grey levels"
        )
        likelihood: Literal[tuple(LIKELIHOODS)] = setting("bernoulli", "the model's likelihood (likelihood.name)")
        seed: int = setting(0, "the noise streams' seed (the run's seed)")
        on_device: bool = setting(False, "move the data set to the GPU once; batches are cut there", message=BOTH_FLAGS)
        pin_memory: bool = setting(False, "batches in page-locked host memory", message=BOTH_FLAGS)
        num_workers: int = setting(
            0,
            "worker processes assembling the batches",
            ge=0,
            message="{key} must be a whole number ≥ 0, got {value!r}",
        )
        num_levels: int | None = setting(..., "values a pixel takes: checked against the files", ge=2)
        overfit_batches: int = setting(0, "> 0: only that many training batches, evaluated on the same", ge=0)

        @model_validator(mode="after")
        def dynamic_binarization_has_an_effect(self) -> InMemoryDataModule.Settings:
            if self.binarize == "dynamic" and self.likelihood != "bernoulli":
                raise ValueError(
                    f"data.binarize=dynamic has no effect with likelihood={self.likelihood}: a continuous likelihood "
                    "sees dequantized pixels; drop data.binarize or choose likelihood=bernoulli"
                )
            if self.binarize == "dynamic" and self.num_levels == 2:
                raise ValueError(
                    "data.binarize=dynamic has no effect on binary images (data.num_levels=2); drop data.binarize"
                )
            return self

    @classmethod
    def check_config(cls, data: DictConfig, cfg: DictConfig | None = None) -> None:
        """The ``data`` node against ``Settings``, then the rules across settings; a subclass adds
        its own after this. ``cfg``: the whole run config (None for a config of the data alone),
        to tell the values a user set from the config files' own."""
        from vaelab.checks import option_name

        label = (option_name(cfg, "data") if cfg is not None else None) or cls.__name__

        def unknown(key: str) -> str:
            return not_a_setting(f"data.{key}", f"data={label}", list(cls.Settings.model_fields))

        validate(cls.Settings, data, "data", unknown)
        if not cls.may_be_continuous:
            refuse_unknown_levels(data)
        if "path" in data and data.path is None and cls.path_is_needed:
            raise UserError("data.path is not set; point it at your data with data.path=<file or folder>")
        if data.get("on_device") and (data.get("num_workers") or data.get("pin_memory")):
            raise UserError(
                "data.on_device=true cuts batches on the GPU itself; drop data.num_workers and data.pin_memory "
                "(they are for data kept on the host)"
            )

    def __init__(
        self,
        image_shape: Sequence[int],
        batch_size: int = 100,
        eval_batch_size: int | None = None,
        binarize: str = Settings.default("binarize"),
        likelihood: str = Settings.default("likelihood"),
        seed: int = Settings.default("seed"),
        on_device: bool = Settings.default("on_device"),
        pin_memory: bool = Settings.default("pin_memory"),
        num_workers: int = Settings.default("num_workers"),
        num_levels: int | None = None,
        overfit_batches: int = Settings.default("overfit_batches"),
        **_,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.binarize_mode = binarize
        self.likelihood = likelihood
        self.seed = seed
        self.num_levels = num_levels
        self.overfit_batches = overfit_batches
        self.on_device, self.pin_memory, self.num_workers = on_device, pin_memory, num_workers
        self.splits: dict[str, Split] | None = None

    def load(self) -> dict[str, Split]:
        """Read the data once: {"train", "val", "test"} -> Split."""
        raise NotImplementedError

    def prepare(self) -> None:
        """Load and check the data (idempotent); called before training so a bad data folder
        fails at once, not after the model was built."""
        if self.splits is not None:
            return
        splits = self.load()
        for split_name, split in splits.items():
            shape = tuple(split.images.shape[1:])
            if shape != self.image_shape:
                raise UserError(
                    f"data {self.name}: {split_name} images have shape {list(shape)} but the config says "
                    f"data.image_shape={list(self.image_shape)}; fix data.image_shape or the files"
                )
            if len(split) == 0:
                raise UserError(f"data {self.name}: the {split_name} split is empty; check the data files")
            if self.num_levels is not None and split.levels is not None and split.levels + 1 != self.num_levels:
                raise UserError(
                    f"data {self.name}: the {split_name} images take {split.levels + 1} values but the config "
                    f"says data.num_levels={self.num_levels}; set data.num_levels={split.levels + 1}"
                )
        if self.batch_size > len(splits["train"]):
            raise UserError(
                f"data.batch_size={self.batch_size} is larger than the {len(splits['train'])} "
                "training examples; lower data.batch_size"
            )
        if self.overfit_batches:
            train = splits["train"]
            n = min(len(train), self.overfit_batches * self.batch_size)
            few = Split(train.images[:n], train.labels[:n], train.levels)
            splits = {"train": few, "val": few, "test": few}
        self.splits = splits

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.batch_size % world:
            # Each process averages its own share: unequal shares would weigh examples unequally.
            raise UserError(
                f"data.batch_size={self.batch_size} does not split evenly over the {world} processes; "
                f"choose a multiple of {world}"
            )
        # Every process must take part in every evaluation batch (the VQ-VAE's codebook statistics
        # are all-reduced there): each batch, and so each split, needs a row for every process.
        smallest = min(len(self.splits["val"]), len(self.splits["test"]))
        if world > 1 and min(self.eval_batch_size, smallest) < world:
            raise UserError(
                f"data.eval_batch_size={self.eval_batch_size} and the smallest evaluation split ({smallest} "
                f"examples) must each hold at least one example for each of the {world} processes; "
                "raise data.eval_batch_size or data.val_size"
            )
        self._freeze_eval_splits()  # with a CPU generator, so before the move below
        if self.on_device and self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.splits = {
                name: Split(s.images.to(device), s.labels.to(device), s.levels) for name, s in self.splits.items()
            }

    @property
    def binarize(self) -> bool:
        if self.dequantize:
            return False
        if self.splits["train"].levels is None:
            return False  # continuous data
        if self.binarize_mode == "auto":
            return self.likelihood == "bernoulli" and self.splits["train"].levels > 1
        return self.binarize_mode == "dynamic"

    @property
    def dequantize(self) -> bool:
        """A continuous likelihood on discrete data: uniform dequantization (module docstring)."""
        return self.likelihood != "bernoulli" and self.splits["train"].levels is not None

    def _loader(self, split: str, batch_size: int, train: bool) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = ShardedBatchSampler(
            len(self.splits[split]),
            batch_size,
            shuffle=train,
            drop_last=train,
            seed=self.seed,
            rank=rank,
            world_size=world,
            noise=SPLIT_NOISE[split],
        )
        # Evaluation splits are binarized once with a fixed seed so every epoch sees the same data.
        dataset = self.dataset(split, train)
        # Its own generator: a DataLoader draws a seed for its workers from the global generator
        # every time it is iterated, which would shift the model's random stream between an
        # uninterrupted run and a resumed one.
        loader = (TrainLoader if train else DataLoader)(
            dataset,
            sampler=sampler,
            batch_size=None,
            generator=torch.Generator().manual_seed(self.seed + rank),
            pin_memory=self.pin_memory,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if train:
            loader.trainer = trainer
        return loader

    def dataset(self, split: str, train: bool = False) -> BatchDataset:
        """The split as the model sees it, indexed by ``BatchRef``s."""
        return BatchDataset(self.splits[split], binarize=self.binarize and train, dequantize=self.dequantize)

    def fixed_eval_split(self, split: str) -> Split:
        """The split as the model is evaluated on it (binarized once, fixed seed, when binarizing)."""
        s = self.splits[split]
        if not self.binarize:
            return s
        g = torch.Generator().manual_seed(derive_seed(SPLIT_NOISE[split]))
        images = torch.bernoulli(s.images.float() / s.levels, generator=g).to(torch.uint8)
        return Split(images, s.labels, levels=1)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        self._freeze_eval_splits()
        return self._loader("val", self.eval_batch_size, train=False)

    def test_dataloader(self) -> DataLoader:
        self._freeze_eval_splits()
        return self._loader("test", self.eval_batch_size, train=False)

    def _freeze_eval_splits(self) -> None:
        if self.binarize and self.splits["val"].levels > 1:
            self.splits["val"] = self.fixed_eval_split("val")
            self.splits["test"] = self.fixed_eval_split("test")


def refuse_unknown_levels(data: DictConfig) -> None:
    """Discrete data under a continuous likelihood: dequantization and the bits/dim offset need
    the number of levels."""
    if "num_levels" in data and data.num_levels is None and data.get("likelihood") != "bernoulli":
        raise UserError(
            "data.num_levels=null, but a continuous likelihood on discrete data needs the values a pixel takes "
            "(its dequantization and bits/dim): set data.num_levels=<N>, such as 256 for 8-bit images"
        )


def fraction_sizes(n: int, val_fraction: float, test_fraction: float) -> list[int]:
    """[train, val, test] sizes of ``n`` examples holding out the given fractions (at least one
    example each for validation and test); the train size may be < 1 for tiny data sets."""
    n_val, n_test = max(1, int(n * val_fraction)), max(1, int(n * test_fraction))
    return [n - n_val - n_test, n_val, n_test]


def split_off(images: Tensor, labels: Tensor, sizes: list[int], seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Shuffle once with a fixed seed (independent of the run's seed, so the test set never
    changes) and cut into consecutive parts of the given sizes."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for size in sizes:
        idx = order[start : start + size]
        parts.append((images[idx], labels[idx]))
        start += size
    return parts
