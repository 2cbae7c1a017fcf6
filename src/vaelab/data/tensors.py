"""A person's own data as one array file: ``data=tensors data.path=<file.npy|.npz|.pt>``.

The file holds images [N, C, H, W] or vectors [N, D] (tabular data, held as [N, D, 1, 1], so the
MLP networks take them as they are). Integer arrays are discrete data, values 0..num_levels-1,
treated as every image data set is (binarized or dequantized, bits/dim a bound on the discrete
data); floating-point arrays are continuous data, given to the model as they are, for a Gaussian
likelihood (its NLL a density, in nats; no dequantization, no bits/dim offset).

An ``.npz`` or a ``.pt`` dictionary may hold the splits (``train``, ``val``, ``test``) and labels
(``labels``, or ``train_labels``, ...); otherwise ``data.key`` names the array (needed only when
there are several) and a fixed ``val_fraction``/``test_fraction`` of it is held out.
"""

from __future__ import annotations

import functools
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import model_validator
from torch import Tensor

from vaelab.data.in_memory import InMemoryDataModule, Split, fraction_sizes, refuse_unknown_levels, split_off
from vaelab.errors import UserError
from vaelab.settings import setting

SUFFIXES = (".npy", ".npz", ".pt")
SPLITS = ("train", "val", "test")


def read_arrays(path: Path) -> dict[str, Any]:
    """The arrays of a .npy (one, named "data"), .npz or .pt file (a tensor, or a dict of them)."""
    if path.suffix not in SUFFIXES:
        raise UserError(f"data.path={path} is not a .npy, .npz or .pt file; save your array as one of those")
    if not path.is_file():
        raise UserError(f"data.path={path} does not exist; point it at your .npy, .npz or .pt file")
    try:
        if path.suffix == ".npy":
            return {"data": np.load(path, mmap_mode="r")}
        if path.suffix == ".npz":
            with np.load(path) as arrays:
                return {key: arrays[key] for key in arrays.files}
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, ValueError, EOFError, RuntimeError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"data.path={path} is not a readable {path.suffix} file of arrays ({reason}); save a tensor or a dict "
            "of tensors with torch.save, or arrays with numpy.save/savez"
        ) from None
    if isinstance(loaded, Tensor):
        return {"data": loaded}
    if isinstance(loaded, dict) and all(isinstance(v, Tensor) for v in loaded.values()):
        return dict(loaded)
    raise UserError(f"data.path={path} holds a {type(loaded).__name__}; save a tensor or a dict of tensors")


def data_arrays(arrays: dict[str, Any], key: str | None, path: Path) -> dict[str, Any]:
    """{"train", "val", "test"} when the file holds the splits, else {"all": the one array}."""
    if all(name in arrays for name in SPLITS):
        return {name: arrays[name] for name in SPLITS}
    if key is not None:
        if key not in arrays:
            raise UserError(f"{path} has no array {key!r}; choose data.key from {sorted(arrays)}")
        return {"all": arrays[key]}
    candidates = [k for k in arrays if "label" not in k]
    if len(candidates) != 1:
        raise UserError(
            f"{path} holds the arrays {sorted(arrays)}: name the data with data.key=<name>, or save the "
            "splits as train, val and test"
        )
    return {"all": arrays[candidates[0]]}


def is_real(array: Any) -> bool:
    """Floating-point values (continuous data), for numpy arrays and torch tensors alike."""
    return array.dtype.is_floating_point if isinstance(array, Tensor) else np.asarray(array).dtype.kind == "f"


def largest(array: Any) -> int:
    return int(array.max()) if len(array) else 0


def shape_of(array: Any, path: Path) -> list[int]:
    """[C, H, W] of images [N, C, H, W], [D, 1, 1] of vectors [N, D]."""
    shape = list(array.shape)
    if len(shape) == 2:
        return [shape[1], 1, 1]
    if len(shape) == 4:
        return shape[1:]
    raise UserError(
        f"{path} holds an array of shape {shape}; give images [N, C, H, W] or vectors [N, D] (reshape it first)"
    )


@functools.lru_cache(maxsize=8)
def _read_facts(path: str, key: str | None, modified: float) -> tuple[list[int], int | None, bool]:
    found = data_arrays(read_arrays(Path(path)), key, Path(path))
    arrays = list(found.values())
    shape = shape_of(arrays[0], Path(path))
    if is_real(arrays[0]):
        return shape, None, True
    top = max(largest(a) for a in arrays)
    return shape, 2 if top <= 1 else 256 if top == 255 else top + 1, False


def file_facts(path: str | Path, key: str | None) -> tuple[list[int], int | None, bool]:
    """(example shape, levels guess, real-valued) of a data file, read once per version of the
    file (the config's resolvers and its check ask several times); a one-line UserError for a file
    that is missing or holds no data of a usable shape."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        read_arrays(resolved)  # raises its message: not a .npy/.npz/.pt, or not there
    return _read_facts(str(resolved), key, resolved.stat().st_mtime)


def quiet_facts(path: str | None, key: str | None) -> tuple[list[int], int | None, bool] | None:
    """``file_facts``, or None for the resolvers when the file cannot be read: the data module's
    check then says why, in one line."""
    if path is None:
        return None
    try:
        return file_facts(path, key)
    except UserError:
        return None


def tensor_shape(path: str | None, key: str | None = None) -> list[int] | None:
    """The example shape in a data file, for ``image_shape: ${tensor_shape:...}`` in the config;
    None when the file cannot be read (the data module's check then says why, in one line)."""
    facts = quiet_facts(path, key)
    return None if facts is None else facts[0]


def tensor_levels(path: str | None, key: str | None = None) -> int | None:
    """The values an example's entries take, for ``num_levels: ${tensor_levels:...}``: None for
    real numbers (continuous data); for integers 2 when they are 0 and 1, 256 when the largest is
    255 (8-bit images), else the largest + 1. Set ``data.num_levels`` when the data can take values
    the file does not show."""
    facts = quiet_facts(path, key)
    return None if facts is None else facts[1]


class TensorsDataModule(InMemoryDataModule):
    """Any array file as a data set (module docstring). ``is_images`` is False for vectors: the
    pictures that need images are skipped, with a note."""

    name = "tensors"
    may_be_continuous = True

    class Settings(InMemoryDataModule.Settings):
        path: str | None = setting(..., "a .npy, .npz or .pt file of images [N, C, H, W] or vectors [N, D]")
        key: str | None = setting(None, "the array's name in a .npz or .pt dictionary (null: the only one)")
        val_fraction: float = setting(0.1, "the examples held out for validation (a file without splits)", ge=0)
        test_fraction: float = setting(0.1, "the examples held out for testing (a file without splits)", ge=0)

        @model_validator(mode="after")
        def leaves_examples_to_train_on(self) -> TensorsDataModule.Settings:
            if self.val_fraction + self.test_fraction >= 1:
                raise ValueError(
                    "data.val_fraction and data.test_fraction must leave examples to train on (sum < 1), "
                    f"got {self.val_fraction!r} and {self.test_fraction!r}"
                )
            return self

    @classmethod
    def check_config(cls, data: Any, cfg: Any = None) -> None:
        if data.get("path") is None:
            raise UserError("data.path is not set; point it at your data with data.path=<file.npy|.npz|.pt>")
        path = Path(data.path).expanduser()
        _, _, continuous = file_facts(path, data.get("key"))
        if continuous and data.get("likelihood") == "bernoulli":
            raise UserError(
                f"{path} holds real numbers (continuous data): choose likelihood=gaussian, or save integer values"
            )
        if not continuous:
            refuse_unknown_levels(data)
        if continuous and data.get("num_levels") is not None:
            raise UserError(
                f"{path} holds real numbers, which take no fixed number of values: set data.num_levels=null"
            )
        super().check_config(data, cfg)

    def __init__(
        self,
        path: str,
        key: str | None = None,
        val_fraction: float = Settings.default("val_fraction"),
        test_fraction: float = Settings.default("test_fraction"),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.path, self.key = Path(path).expanduser(), key
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.is_images = True

    def load(self) -> dict[str, Split]:
        arrays = read_arrays(self.path)
        found = data_arrays(arrays, self.key, self.path)
        self.is_images = len(next(iter(found.values())).shape) == 4
        tensors = {name: self.as_examples(array) for name, array in found.items()}
        labels = {name: self.labels_for(arrays, name, len(x)) for name, x in tensors.items()}
        if "all" in tensors:
            x, y = tensors["all"], labels["all"]
            sizes = fraction_sizes(len(x), self.val_fraction, self.test_fraction)
            if sizes[0] < 1:
                raise UserError(f"{self.path} holds {len(x)} examples; it needs at least 3 (train/val/test)")
            tensors, labels = {}, {}
            for name, (xs, ys) in zip(SPLITS, split_off(x, y, sizes)):
                tensors[name], labels[name] = xs, ys
        if tensors["train"].dtype.is_floating_point:
            return {name: Split(tensors[name], labels[name], levels=None) for name in SPLITS}
        top = max(int(t.max()) for t in tensors.values())
        levels = self.num_levels - 1 if self.num_levels is not None else max(top, 1)
        if top > levels:
            raise UserError(
                f"{self.path} holds values up to {top} but data.num_levels={self.num_levels}; "
                f"set data.num_levels={top + 1} or more"
            )
        return {name: Split(tensors[name].to(torch.uint8), labels[name], levels=levels) for name in SPLITS}

    def as_examples(self, array: Any) -> Tensor:
        """The array as a tensor [N, C, H, W] (vectors [N, D, 1, 1]); integers checked to fit 0..255."""
        x = torch.from_numpy(np.array(array)) if not isinstance(array, Tensor) else array  # a copy of a mapped file
        shape_of(x, self.path)
        if x.ndim == 2:
            x = x[:, :, None, None]
        if x.dtype.is_floating_point:
            if not torch.isfinite(x).all():
                raise UserError(f"{self.path} holds NaN or infinite values; clean or drop those rows first")
            return x.float().contiguous()
        if x.dtype == torch.bool:
            return x.to(torch.uint8)
        if len(x) and (int(x.min()) < 0 or int(x.max()) > 255):
            raise UserError(
                f"{self.path} holds integers from {int(x.min())} to {int(x.max())}; discrete data must be 0..255 "
                "(save real values as floats for continuous data)"
            )
        return x.contiguous()

    def labels_for(self, arrays: dict[str, Any], split: str, n: int) -> Tensor:
        """The split's labels ([n]) from ``labels`` (whole file) or ``<split>_labels``; -1 if none."""
        name = "labels" if split == "all" else f"{split}_labels"
        if name not in arrays:
            return torch.full((n,), -1, dtype=torch.long)
        labels = torch.as_tensor(np.asarray(arrays[name])).long().reshape(-1)
        if len(labels) != n:
            raise UserError(f"{self.path}: {name} has {len(labels)} entries for {n} examples; save one label each")
        return labels
