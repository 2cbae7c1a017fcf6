"""Data modules on small files written here in the real formats."""

import gzip
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab.data import (
    BinarizedMNISTDataModule,
    DigitsDataModule,
    ImageFolderDataModule,
    SyntheticDataModule,
    TorchvisionDataModule,
)
from vaelab.data.datasets import read_amat, read_idx
from vaelab.data.in_memory import ShardedBatchSampler
from vaelab.errors import UserError


def write_idx(path, array: np.ndarray, compress: bool) -> None:
    magic = 0x00000800 | array.ndim
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def write_binarized_npz(path, n=(30, 10, 10), seed=0) -> dict:
    rng = np.random.default_rng(seed)
    bits = {k: (rng.random((m, 784)) < 0.2).astype(np.uint8) for k, m in zip(("train", "valid", "test"), n)}
    np.savez(path, **{k: np.packbits(v, axis=1) for k, v in bits.items()})
    return bits


def test_digits_splits_and_scaling():
    dm = DigitsDataModule(image_shape=[1, 8, 8], likelihood="bernoulli", binarize="none")
    dm.prepare()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [1437, 180, 180]
    all_images = torch.cat([dm.splits[s].images for s in ("train", "val", "test")])
    assert all_images.unique(dim=0).shape[0] > 1700  # the splits do not repeat images
    x, y = next(iter(dm._loader("train", 100, train=True)))
    assert x.shape == (100, 1, 8, 8) and x.dtype == torch.float32
    assert x.min() == 0 and x.max() == 1 and ((x * 16) - (x * 16).round()).abs().max() < 1e-6
    assert set(y.tolist()) <= set(range(10))


def test_dynamic_binarization_follows_the_likelihood():
    bern = DigitsDataModule(image_shape=[1, 8, 8], likelihood="bernoulli")
    gauss = DigitsDataModule(image_shape=[1, 8, 8], likelihood="gaussian")
    for dm in (bern, gauss):
        dm.prepare()
    assert bern.binarize and not gauss.binarize
    loader = bern._loader("train", 1437, train=True)
    x1, _ = next(iter(loader))
    assert torch.equal(next(iter(loader))[0], x1)  # the same epoch: the same draw (exact resume)
    loader.sampler.set_epoch(1)  # as Lightning does at every epoch
    x2, _ = next(iter(loader))
    assert set(x1.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(x1, x2)  # a fresh draw each time the data is seen
    # The mean of the binarized data is the mean grey level.
    grey = bern.splits["train"].images.float().mean() / 16
    assert abs(x1.mean() - grey) < 0.01
    # Validation data is binarized once, identically every epoch.
    v1 = next(iter(bern.val_dataloader()))[0]
    v2 = next(iter(bern.val_dataloader()))[0]
    assert torch.equal(v1, v2) and set(v1.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("n,batch", [(1000, 100), (1001, 100), (37, 8)])
def test_sharded_batches_reassemble_the_single_process_batches(n, batch):
    single = [b.indices for b in ShardedBatchSampler(n, batch, shuffle=True, drop_last=True, seed=3)]
    ranks = [
        [b.indices for b in ShardedBatchSampler(n, batch, shuffle=True, drop_last=True, seed=3, rank=r, world_size=2)]
        for r in range(2)
    ]
    assert len(ranks[0]) == len(ranks[1]) == len(single) == n // batch
    for whole, a, b in zip(single, *ranks):
        assert torch.equal(torch.cat([a, b]), whole)
        assert len(a) == batch // 2 + batch % 2  # each rank gets its share of the global batch


def test_sampler_reshuffles_per_epoch_and_evaluation_covers_everything():
    s = ShardedBatchSampler(50, 10, shuffle=True, drop_last=True, seed=0)
    first = torch.cat([b.indices for b in s])
    s.set_epoch(1)
    second = torch.cat([b.indices for b in s])
    assert not torch.equal(first, second) and torch.equal(first.sort().values, second.sort().values)
    ev = [
        torch.cat([b.indices for b in ShardedBatchSampler(53, 10, False, False, rank=r, world_size=2)])
        for r in range(2)
    ]
    assert torch.equal(torch.cat(ev).sort().values, torch.arange(53))


def test_binarized_mnist_npz(tmp_path):
    bits = write_binarized_npz(tmp_path / "b.npz")
    dm = BinarizedMNISTDataModule(path=str(tmp_path / "b.npz"), image_shape=[1, 28, 28], batch_size=10)
    dm.prepare()
    assert torch.equal(dm.splits["val"].images.flatten(1), torch.from_numpy(bits["valid"]))
    assert not dm.binarize  # already binary


def test_binarized_mnist_amat_folder(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 5), ("valid", 3), ("test", 3)):
        rows = (rng.random((n, 784)) < 0.3).astype(int)
        (tmp_path / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    dm = BinarizedMNISTDataModule(path=str(tmp_path), download=False, image_shape=[1, 28, 28], batch_size=5)
    dm.prepare()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [5, 3, 3]
    assert dm.splits["train"].images.shape == (5, 1, 28, 28)


def test_amat_short_line_is_recognised(tmp_path):
    path = tmp_path / "binarized_mnist_train.amat"
    path.write_text(" ".join(["0"] * 784) + "\n" + " ".join(["1"] * 700) + "\n")
    with pytest.raises(UserError, match=r"train.amat:2 has 700 values, expected 784"):
        read_amat(path)


def test_missing_amat_without_download(tmp_path):
    dm = BinarizedMNISTDataModule(path=str(tmp_path), download=False, image_shape=[1, 28, 28])
    with pytest.raises(UserError, match="missing; copy it there or set data.download=true"):
        dm.prepare()


def test_truncated_npz_is_recognised(tmp_path):
    write_binarized_npz(tmp_path / "b.npz")
    data = (tmp_path / "b.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    dm = BinarizedMNISTDataModule(path=str(tmp_path / "cut.npz"), image_shape=[1, 28, 28])
    with pytest.raises(UserError, match="not a readable .npz"):
        dm.prepare()


def test_missing_npz(tmp_path):
    dm = BinarizedMNISTDataModule(path=str(tmp_path / "nope.npz"), image_shape=[1, 28, 28])
    with pytest.raises(UserError, match="does not exist"):
        dm.prepare()


@pytest.mark.parametrize("compress", [True, False])
def test_fashion_mnist_idx_folder(tmp_path, compress):
    suffix = ".gz" if compress else ""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 4)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (n, 28, 28)), compress)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), compress)
    dm = TorchvisionDataModule(
        name="fashion_mnist",
        root=str(tmp_path),
        download=False,
        val_size=2,
        image_shape=[1, 28, 28],
        likelihood="gaussian",
        batch_size=5,
    )
    dm.prepare()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [10, 2, 4]
    expected = read_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", 3)
    assert torch.equal(dm.splits["test"].images[:, 0], expected)


def test_idx_bad_magic_and_truncation(tmp_path):
    write_idx(tmp_path / "labels", np.zeros(5), compress=False)
    with pytest.raises(UserError, match="not an IDX file of 3-d unsigned bytes"):
        read_idx(tmp_path / "labels", 3)
    write_idx(tmp_path / "images", np.zeros((4, 28, 28)), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "images").read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "short", 3)


def write_raw_mnist(root, n_train: int = 8, n_test: int = 3) -> None:
    """torchvision's MNIST raw IDX files under ``root``, random images and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), compress=False)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (n,)), compress=False)


def test_torchvision_mnist_from_raw_files(tmp_path):
    write_raw_mnist(tmp_path)
    dm = TorchvisionDataModule(
        name="mnist", root=str(tmp_path), download=False, val_size=2, image_shape=[1, 28, 28], batch_size=4
    )
    dm.prepare()
    assert [len(dm.splits[s]) for s in ("train", "val", "test")] == [6, 2, 3]


def test_a_validation_split_as_large_as_the_training_file_is_refused(tmp_path):
    write_raw_mnist(tmp_path)
    dm = TorchvisionDataModule(
        name="mnist", root=str(tmp_path), download=False, val_size=8, image_shape=[1, 28, 28], batch_size=4
    )
    with pytest.raises(
        UserError,
        match=r"^data.val_size=8 leaves none of the 8 training images to train on; "
        r"lower data.val_size$",
    ):
        dm.prepare()


def test_torchvision_missing_data_without_network(tmp_path):
    dm = TorchvisionDataModule(name="cifar10", root=str(tmp_path), download=False, image_shape=[3, 32, 32])
    with pytest.raises(UserError, match="cifar10 not found under data.root"):
        dm.prepare()


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "README.txt").write_text("not an image, and ignored")
    dm = ImageFolderDataModule(path=str(tmp_path), image_shape=[3, 16, 16], batch_size=4)
    dm.prepare()
    assert sum(len(dm.splits[s]) for s in ("train", "val", "test")) == 10
    assert dm.splits["train"].images.shape[1:] == (3, 16, 16)
    labels = torch.cat([dm.splits[s].labels for s in ("train", "val", "test")])
    assert sorted(labels.tolist()) == [0] * 5 + [1] * 5


def test_image_folder_with_a_broken_image(tmp_path):
    for i in range(3):
        Image.new("L", (8, 8)).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"this is not a jpeg")
    dm = ImageFolderDataModule(path=str(tmp_path), image_shape=[1, 8, 8])
    with pytest.raises(UserError, match="broken.jpg is not a readable image"):
        dm.prepare()


def test_declared_shape_must_match_the_data():
    dm = SyntheticDataModule(image_shape=[1, 8, 8])
    dm.prepare()
    dm2 = DigitsDataModule(image_shape=[1, 28, 28])
    with pytest.raises(UserError, match=r"have shape \[1, 8, 8\] but the config says data.image_shape=\[1, 28, 28\]"):
        dm2.prepare()


def test_npz_without_the_expected_arrays(tmp_path):
    np.savez(tmp_path / "other.npz", images=np.zeros((3, 98), dtype=np.uint8))
    dm = BinarizedMNISTDataModule(path=str(tmp_path / "other.npz"), image_shape=[1, 28, 28])
    with pytest.raises(UserError, match="has no array 'train': expected keys train, valid, test"):
        dm.prepare()


def test_image_folder_that_does_not_exist(tmp_path):
    dm = ImageFolderDataModule(path=str(tmp_path / "missing"), image_shape=[3, 8, 8])
    with pytest.raises(UserError, match="is not a folder; point it at a folder of images"):
        dm.prepare()


def test_amat_download_without_network_says_what_to_do(tmp_path, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlretrieve", no_network)
    dm = BinarizedMNISTDataModule(path=str(tmp_path), download=True, image_shape=[1, 28, 28])
    with pytest.raises(UserError, match="could not download binarized_mnist_train.amat .*set data.path to the packed"):
        dm.prepare()
    assert not list(tmp_path.glob("*.amat"))  # nothing half-downloaded left under the final name


@pytest.mark.parametrize("levels", [16, 255])  # digits (17 values) and 8-bit data (256 values)
def test_a_gaussian_likelihood_sees_uniformly_dequantized_data_and_its_bound_adds_log_levels(levels):
    """Worked by hand: for y = (x + u) / L with u ~ U[0, 1) and L = levels + 1 values,
    E_u[log N(y; m, s)] = -log(s sqrt(2 pi)) - (((x + 1/2) / L - m)^2 + 1 / (12 L^2)) / (2 s^2),
    and -log P(x) <= -E_u[log p(y)] + log L per dimension."""
    import math

    from vaelab.data.in_memory import InMemoryDataModule, Split
    from vaelab.distributions import GaussianLikelihood

    x = torch.tensor([[[[0, levels // 3, levels]]]], dtype=torch.uint8).expand(4000, 1, 1, 3).contiguous()

    class Three(InMemoryDataModule):
        def load(self):
            return {name: Split(x, torch.zeros(len(x), dtype=torch.long), levels) for name in ("train", "val", "test")}

    data = Three(image_shape=[1, 1, 3], batch_size=4000, likelihood="gaussian", num_levels=levels + 1)
    data.setup()
    y = next(iter(data.train_dataloader()))[0]
    L = levels + 1
    assert torch.equal((y * L).floor(), x.float())  # each value inside its own bin
    m, s = 0.5, 0.3
    likelihood = GaussianLikelihood(sigma=s, num_levels=L)
    mean_log_density = likelihood.log_prob(y, torch.full_like(y, m)).mean().item()
    expected = sum(
        -math.log(s * math.sqrt(2 * math.pi)) - (((v + 0.5) / L - m) ** 2 + 1 / (12 * L**2)) / (2 * s**2)
        for v in (0, levels // 3, levels)
    )
    assert mean_log_density == pytest.approx(expected, abs=0.01)
    assert likelihood.bpd_offset_nats_per_dim == pytest.approx(math.log(L))
    # Evaluation data is dequantized once: the same values every epoch.
    assert torch.equal(next(iter(data.val_dataloader()))[0], next(iter(data.val_dataloader()))[0])


def test_random_streams_that_should_be_independent_are():
    """Validation and test binarizations use different thresholds; seed 1's data order is not seed
    0's shifted by an epoch; a global batch that does not split evenly over the processes is refused
    (the per-process means would weigh examples unequally)."""
    from types import SimpleNamespace

    from vaelab.data.in_memory import InMemoryDataModule, Split

    grey = torch.full((200, 1, 4, 4), 8, dtype=torch.uint8)

    class Grey(InMemoryDataModule):
        def load(self):
            return {name: Split(grey, torch.zeros(200, dtype=torch.long), 16) for name in ("train", "val", "test")}

    data = Grey(image_shape=[1, 4, 4], batch_size=10)
    data.prepare()
    assert not torch.equal(data.fixed_eval_split("val").images, data.fixed_eval_split("test").images)
    seed0 = ShardedBatchSampler(200, 10, shuffle=True, drop_last=True, seed=0)
    seed1 = ShardedBatchSampler(200, 10, shuffle=True, drop_last=True, seed=1)
    seed0.set_epoch(1)
    assert not torch.equal(next(iter(seed0)).indices, next(iter(seed1)).indices)
    data.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(
        UserError,
        match=r"data.batch_size=10 does not split evenly over the 3 processes; "
        r"choose a multiple of 3",
    ):
        data.setup("fit")


@pytest.mark.parametrize("n,batch,world", [(101, 50, 2), (103, 50, 4), (51, 10, 2), (50, 10, 2), (7, 3, 3)])
def test_every_process_gets_the_same_number_of_non_empty_evaluation_batches(n, batch, world):
    """A model whose evaluation step all-reduces (the VQ-VAE's codebook statistics) waits for
    every process at every batch: a process left without rows in the last batch would hang the
    others. A last batch too small to share is folded into the one before it."""
    samplers = [ShardedBatchSampler(n, batch, False, False, rank=r, world_size=world) for r in range(world)]
    shares = [[b.indices for b in s] for s in samplers]
    assert len({len(s) for s in shares}) == 1 and all(len(s) == len(share) for s, share in zip(samplers, shares))
    assert all(len(indices) > 0 for share in shares for indices in share)
    assert torch.equal(torch.cat([torch.cat(s) for s in shares]).sort().values, torch.arange(n))
    # A single process keeps the plain batches.
    single = [len(b.indices) for b in ShardedBatchSampler(n, batch, False, False)]
    assert single == [len(b) for b in torch.arange(n).split(batch)]


def test_under_ddp_every_evaluation_batch_needs_a_row_for_every_process():
    """Else a process would skip an evaluation step that the others' all-reduce waits for."""
    from types import SimpleNamespace

    from vaelab.data.datasets import SyntheticDataModule
    from vaelab.errors import UserError

    def setup(world, **kwargs):
        dm = SyntheticDataModule(**{"image_shape": [1, 8, 8], "batch_size": 4, "num_eval": 64, **kwargs})
        dm.trainer = SimpleNamespace(world_size=world, global_rank=0)
        dm.setup("fit")

    setup(4, eval_batch_size=4)
    with pytest.raises(UserError, match="data.eval_batch_size=3 and the smallest evaluation split"):
        setup(4, eval_batch_size=3)
    with pytest.raises(UserError, match=r"smallest evaluation split \(3 examples\)"):
        setup(4, num_eval=3)
