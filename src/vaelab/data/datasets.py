"""The data sets, each a LightningDataModule holding its splits in memory as uint8 tensors."""

from __future__ import annotations

import gzip
import struct
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from pydantic import model_validator

from vaelab.checks import set_by_user
from vaelab.data.in_memory import InMemoryDataModule, Split, fraction_sizes, split_off
from vaelab.errors import UserError
from vaelab.settings import setting

if TYPE_CHECKING:
    from omegaconf import DictConfig


def no_labels(n: int) -> torch.Tensor:
    return torch.full((n,), -1, dtype=torch.long)


class DigitsDataModule(InMemoryDataModule):
    """scikit-learn's 1797 handwritten 8x8 digits (grey levels 0..16); ships with the package,
    so it needs no download. Fixed 1437/180/180 split."""

    name = "digits"

    def load(self) -> dict[str, Split]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8)).unsqueeze(1)
        labels = torch.from_numpy(digits.target).long()
        train, val, test = split_off(images, labels, [1437, 180, 180])
        return {name: Split(x, y, levels=16) for name, (x, y) in zip(("train", "val", "test"), (train, val, test))}


class SyntheticDataModule(InMemoryDataModule):
    """Random binary images made from a few prototypes with flipped pixels: has structure to
    learn, costs nothing to make. For tests and smoke runs."""

    name = "synthetic"

    class Settings(InMemoryDataModule.Settings):
        num_train: int = setting(512, "training images", ge=1)
        num_eval: int = setting(128, "validation images, and as many test images", ge=1)
        num_prototypes: int = setting(4, "random binary prototypes", ge=1)
        flip: float = setting(0.05, "each pixel's chance to flip", ge=0, le=1, says="a probability in [0, 1]")

    def __init__(
        self,
        num_train: int = Settings.default("num_train"),
        num_eval: int = Settings.default("num_eval"),
        num_prototypes: int = Settings.default("num_prototypes"),
        flip: float = Settings.default("flip"),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.sizes = [num_train, num_eval, num_eval]
        self.num_prototypes, self.flip = num_prototypes, flip

    def load(self) -> dict[str, Split]:
        g = torch.Generator().manual_seed(0)
        prototypes = (torch.rand(self.num_prototypes, *self.image_shape, generator=g) < 0.5).float()
        n = sum(self.sizes)
        labels = torch.randint(self.num_prototypes, (n,), generator=g)
        flips = (torch.rand(n, *self.image_shape, generator=g) < self.flip).float()
        images = (prototypes[labels] - flips).abs().to(torch.uint8)
        parts = split_off(images, labels, self.sizes)
        return {name: Split(x, y, levels=1) for name, (x, y) in zip(("train", "val", "test"), parts)}


BINARIZED_MNIST_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/binarized_mnist_{}.amat"


def read_amat(path: Path) -> torch.Tensor:
    """A binarized-MNIST ``.amat`` file: one image a line, 784 space-separated 0/1 values."""
    rows = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            values = line.split()
            if len(values) != 784:
                raise UserError(
                    f"{path}:{line_no} has {len(values)} values, expected 784: the file is "
                    "truncated or not binarized MNIST; download it again"
                )
            rows.append(values)
    return torch.from_numpy(np.asarray(rows, dtype=np.uint8)).view(-1, 1, 28, 28)


def read_binarized_mnist_npz(path: Path) -> dict[str, torch.Tensor]:
    """The packed ``.npz`` (keys train/valid/test, 98 bytes a row from np.packbits)."""
    try:
        with np.load(path) as data:
            missing = [key for key in ("train", "valid", "test") if key not in data.files]
            if missing:
                raise UserError(f"{path} has no array {missing[0]!r}: expected keys train, valid, test")
            packed = {key: data[key] for key in ("train", "valid", "test")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path} is not a readable .npz ({e}); download or copy it again") from None
    out = {}
    for key, rows in packed.items():
        if rows.ndim != 2 or rows.shape[1] != 98:
            raise UserError(f"{path}: array {key!r} has shape {rows.shape}, expected (N, 98) packed bits")
        out[key] = torch.from_numpy(np.unpackbits(rows, axis=1)[:, :784].reshape(-1, 1, 28, 28).copy())
    return out


class BinarizedMNISTDataModule(InMemoryDataModule):
    """Fixed binarization of MNIST (Larochelle & Murray 2011), 50k/10k/10k, the density
    benchmark of the VAE and IWAE papers. ``path``: the packed ``.npz`` or a folder with
    ``binarized_mnist_{train,valid,test}.amat`` (downloaded there when missing and
    ``download`` is true)."""

    name = "binarized_mnist"

    class Settings(InMemoryDataModule.Settings):
        path: str | None = setting(..., "the packed .npz, or a folder for the .amat files")
        download: bool = setting(True, "download the .amat files where they are missing")

    @classmethod
    def check_config(cls, data: DictConfig, cfg: DictConfig | None = None) -> None:
        super().check_config(data, cfg)
        path = Path(data.path)
        if not (path.suffix == ".npz" or path.is_dir() or not path.exists()):
            raise UserError(
                f"data.path={path} is a file but not a .npz; point data.path at binarized_mnist.npz "
                "or at a folder for the .amat files"
            )

    def __init__(self, path: str, download: bool = Settings.default("download"), **kwargs):
        super().__init__(**kwargs)
        self.path, self.download = Path(path), download

    def load(self) -> dict[str, Split]:
        if self.path.suffix == ".npz":
            if not self.path.is_file():
                raise UserError(
                    f"data.path={self.path} does not exist; point data.path at binarized_mnist.npz "
                    "or at a folder for the .amat files"
                )
            arrays = read_binarized_mnist_npz(self.path)
        else:
            arrays = {split: read_amat(self._amat(split)) for split in ("train", "valid", "test")}
        no = no_labels
        return {
            "train": Split(arrays["train"], no(len(arrays["train"])), levels=1),
            "val": Split(arrays["valid"], no(len(arrays["valid"])), levels=1),
            "test": Split(arrays["test"], no(len(arrays["test"])), levels=1),
        }

    def _amat(self, split: str) -> Path:
        path = self.path / f"binarized_mnist_{split}.amat"
        if path.is_file():
            return path
        if not self.download:
            raise UserError(f"{path} is missing; copy it there or set data.download=true")
        self.path.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        try:
            urllib.request.urlretrieve(BINARIZED_MNIST_URL.format(split), partial)
        except OSError as e:
            raise UserError(
                f"could not download {path.name} ({e}); with no network, set "
                "data.path to the packed binarized_mnist.npz"
            ) from None
        partial.rename(path)
        return path


IDX_MAGIC = {3: 0x00000803, 1: 0x00000801}  # unsigned byte, 3-d images / 1-d labels


def read_idx(path: Path, ndim: int) -> torch.Tensor:
    """An IDX file of unsigned bytes (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f"{path} cannot be read ({e}); reinstall or download it again") from None
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else None
    if magic != IDX_MAGIC[ndim]:
        raise UserError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic {magic}); check you pointed at the right file"
        )
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated ({body.size} of {int(np.prod(dims))} bytes); download it again")
    return torch.from_numpy(body.reshape(dims).copy())


def find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
            if (folder / name).is_file():
                return folder / name
    return None


class TorchvisionDataModule(InMemoryDataModule):
    """MNIST, Fashion-MNIST, CIFAR-10 and CelebA (64x64) through torchvision, from ``root``,
    downloading there when ``download`` is true and a network exists (CelebA only where gdown is
    installed, by hand: vaelab does not depend on it). The validation split is
    the last ``val_size`` training images (CelebA has its own). Fashion-MNIST also reads a
    folder of raw IDX files such as Debian's /usr/share/datasets/fashion-mnist."""

    class Settings(InMemoryDataModule.Settings):
        name: Literal["mnist", "fashion_mnist", "cifar10", "celeba"] = setting(
            ...,
            "the data set",
            message="{key} must be one of mnist, fashion_mnist, cifar10, celeba, got {value!r}; "
            "choose data=<name> (or data=image_folder for other images)",
        )
        root: str = setting(..., "the folder it is read from (and downloaded to)")
        download: bool = setting(True, "download it there when missing and a network exists")
        val_size: int = setting(5000, "the last training images, held out for validation (not CelebA's)", ge=1)

    @classmethod
    def check_config(cls, data: DictConfig, cfg: DictConfig | None = None) -> None:
        super().check_config(data, cfg)
        if data.name == "celeba" and cfg is not None and set_by_user(cfg, "data.val_size", like=("_target_", "name")):
            raise UserError(
                "data.val_size has no effect on data=celeba, which has its own validation split; drop data.val_size"
            )

    def __init__(
        self,
        name: str,
        root: str,
        download: bool = Settings.default("download"),
        val_size: int = Settings.default("val_size"),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.name, self.root, self.download, self.val_size = name, Path(root), download, val_size

    def load(self) -> dict[str, Split]:
        if self.name == "fashion_mnist" and find_idx(self.root, "train-images-idx3-ubyte"):
            train, test = self._read_idx_folder()
        elif self.name == "celeba":
            return self._load_celeba()
        else:
            train, test = (self._torchvision(train=flag) for flag in (True, False))
        levels = 255
        n_val = self.val_size
        if n_val >= len(train[0]):
            raise UserError(
                f"data.val_size={n_val} leaves none of the {len(train[0])} training images to train on; "
                "lower data.val_size"
            )
        return {
            "train": Split(train[0][:-n_val], train[1][:-n_val], levels),
            "val": Split(train[0][-n_val:], train[1][-n_val:], levels),
            "test": Split(test[0], test[1], levels),
        }

    def _read_idx_folder(self):
        def pair(prefix: str):
            x = read_idx(find_idx(self.root, f"{prefix}-images-idx3-ubyte"), 3).unsqueeze(1)
            label_file = find_idx(self.root, f"{prefix}-labels-idx1-ubyte")
            y = read_idx(label_file, 1).long() if label_file else no_labels(len(x))
            return x, y

        if not find_idx(self.root, "t10k-images-idx3-ubyte"):
            raise UserError(f"{self.root} has train-images but no t10k-images-idx3-ubyte(.gz); add the test file")
        return pair("train"), pair("t10k")

    def _torchvision(self, train: bool):
        import torchvision.datasets as tvd

        cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}[self.name]
        ds = self._open(lambda download: cls(str(self.root), train=train, download=download))
        x = torch.as_tensor(ds.data)
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # CIFAR is stored HWC
        return x.contiguous(), torch.as_tensor(ds.targets).long()

    def _load_celeba(self):
        """Decoded once (center crop 148, resize to 64, the usual VAE preprocessing) and cached
        as a tensor file under ``root``, so later runs start in seconds."""
        import torchvision.datasets as tvd
        import torchvision.transforms.v2 as T

        cache = self.root / "celeba64_uint8.pt"
        if cache.is_file():
            splits = torch.load(cache)
        else:
            transform = T.Compose([T.PILToTensor(), T.CenterCrop(148), T.Resize(64, antialias=True)])
            splits = {}
            for ours, theirs in (("train", "train"), ("val", "valid"), ("test", "test")):
                ds = self._open(
                    lambda download, theirs=theirs: tvd.CelebA(
                        str(self.root), split=theirs, download=download, transform=transform
                    )
                )
                splits[ours] = torch.stack([ds[i][0] for i in range(len(ds))])
            torch.save(splits, cache)
        return {name: Split(x, no_labels(len(x)), levels=255) for name, x in splits.items()}

    def _open(self, make: Callable[[bool], Any]) -> Any:
        """``make(download)``, the torchvision data set, or the one-line error saying what is
        missing. A failed download leaves none of the folders it made (torchvision makes
        ``root`` and its data set's folders before it knows whether anything can be fetched)."""
        try:
            return make(False)
        except RuntimeError:
            if not self.download or not can_download(self.name):
                raise self._not_found() from None
        made = [p for p in self._download_folders() if not p.exists()]
        try:
            return make(True)
        except Exception as e:  # urllib, tarfile, gdown and torchvision's checks each fail their own way
            for folder in made:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    pass  # not empty (a partial download) or not made
            lines = [line.strip() for line in str(e).splitlines() if line.strip()]
            raise self._not_found(lines[-1][:100] if lines else e.__class__.__name__) from None

    def _download_folders(self) -> list[Path]:
        """The folders a download may make, deepest first: the data set's own ones, ``root`` and
        the parents of ``root``."""
        own = {"mnist": ["MNIST/raw", "MNIST"], "fashion_mnist": ["FashionMNIST/raw", "FashionMNIST"]}
        own["celeba"] = ["celeba/img_align_celeba", "celeba"]
        absolute = self.root.absolute()
        return [absolute / sub for sub in own.get(self.name, [])] + [absolute, *absolute.parents]

    def _not_found(self, download_failure: str | None = None) -> UserError:
        root = self.root
        needs = {
            "mnist": f"{root / 'MNIST' / 'raw'}/ with the four *-ubyte files",
            "fashion_mnist": f"{root / 'FashionMNIST' / 'raw'}/ (or {root}/ itself) with the four *-ubyte(.gz) files",
            "cifar10": f"{root / 'cifar-10-batches-py'}/, the unpacked cifar-10-python.tar.gz",
            "celeba": f"{root / 'celeba'}/ with img_align_celeba/ and the five .txt lists",
        }[self.name]
        failed = f", and the download failed ({download_failure})" if download_failure else ""
        if can_download(self.name):
            todo = "data.download=true with a network"
        else:
            todo = (
                "download Img/img_align_celeba.zip (unzipped), Anno/*.txt and Eval/list_eval_partition.txt from "
                f"{CELEBA_PAGE} into {root / 'celeba'}/ (data.download cannot: torchvision fetches CelebA with "
                "gdown, which vaelab does not install)"
            )
        return UserError(
            f"{self.name} not found under data.root={root}: it needs {needs}{failed}; "
            f"set data.root=<folder with the files>, or {todo}"
        )


CELEBA_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def can_download(name: str) -> bool:
    """Whether torchvision can fetch the data set here: CelebA comes from Google Drive through
    gdown, which is not among vaelab's dependencies (that download is often refused for quota)."""
    import importlib.util

    return name != "celeba" or importlib.util.find_spec("gdown") is not None


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class ImageFolderDataModule(InMemoryDataModule):
    """A person's own images: every image file under ``path`` (recursively), resized to
    ``image_shape`` and held in memory; a fixed ``val_fraction``/``test_fraction`` split.
    Labels are the names of the first-level subfolders, when there are any."""

    name = "image_folder"

    class Settings(InMemoryDataModule.Settings):
        path: str | None = setting(..., "a folder of images (recursively)")
        val_fraction: float = setting(0.1, "the images held out for validation", ge=0)
        test_fraction: float = setting(0.1, "the images held out for testing", ge=0)

        @model_validator(mode="after")
        def leaves_images_to_train_on(self) -> ImageFolderDataModule.Settings:
            if self.val_fraction + self.test_fraction >= 1:
                raise ValueError(
                    "data.val_fraction and data.test_fraction must be ≥ 0 and leave images to train on (sum < 1), "
                    f"got {self.val_fraction!r} and {self.test_fraction!r}"
                )
            if self.image_shape[0] not in (1, 3):
                raise ValueError(
                    f"data.image_shape[0] (channels) must be 1 or 3 for image_folder, got {self.image_shape[0]}"
                )
            return self

    def __init__(
        self,
        path: str,
        val_fraction: float = Settings.default("val_fraction"),
        test_fraction: float = Settings.default("test_fraction"),
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.path, self.val_fraction, self.test_fraction = Path(path), val_fraction, test_fraction

    def load(self) -> dict[str, Split]:
        import torchvision.transforms.v2.functional as TF
        from PIL import Image, UnidentifiedImageError

        if not self.path.is_dir():
            raise UserError(f"data.path={self.path} is not a folder; point it at a folder of images")
        files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < 3:
            raise UserError(f"{self.path} has {len(files)} image files; it needs at least 3 (train/val/test)")
        channels, height, width = self.image_shape
        mode = {1: "L", 3: "RGB"}[channels]
        images = []
        for f in files:
            try:
                with Image.open(f) as im:
                    im = im.convert(mode)
                    images.append(TF.resize(TF.pil_to_tensor(im), [height, width], antialias=True))
            except (UnidentifiedImageError, OSError) as e:
                raise UserError(f"{f} is not a readable image ({e.__class__.__name__}); remove or replace it") from None
        classes = sorted({f.relative_to(self.path).parts[0] for f in files if len(f.relative_to(self.path).parts) > 1})
        labels = torch.tensor(
            [classes.index(f.relative_to(self.path).parts[0]) if f.parent != self.path else -1 for f in files]
        )
        x = torch.stack(images)
        parts = split_off(x, labels, fraction_sizes(len(x), self.val_fraction, self.test_fraction))
        return {name: Split(xs, ys, levels=255) for name, (xs, ys) in zip(("train", "val", "test"), parts)}
