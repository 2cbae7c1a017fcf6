import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# No test may reach the network: W&B runs offline, data sets never download.
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.pop("WANDB_API_KEY", None)


@pytest.fixture(autouse=True, scope="session")
def no_network():
    """A connection to anything but this machine (loopback: DDP's gloo, W&B's local service) fails
    at once in every test of this process, so a test that would reach the network fails instead."""
    import ipaddress
    import socket

    connect = socket.socket.connect

    def local_only(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            try:
                local = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                local = False
            if not local:
                raise OSError(f"the tests may not reach the network (a connection to {host})")
        return connect(self, address)

    socket.socket.connect = local_only
    yield
    socket.socket.connect = connect


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))

from test_data import write_binarized_npz, write_idx  # noqa: E402


def run_cli(args: list[str], cwd: Path, timeout: int = 300, script: str = "train.py") -> subprocess.CompletedProcess:
    """`python train.py *args` as a user types it, from ``cwd``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


@pytest.fixture(scope="session")
def data_files(tmp_path_factory) -> dict[str, Path]:
    """Small data sets in the real file formats, made once per test session."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    write_binarized_npz(root / "binarized_mnist.npz", n=(200, 50, 50))
    raw = root / "torchvision" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    fashion = root / "fashion"
    fashion.mkdir()
    # Grey images around four prototypes (a model can learn them, as it can a real data set's).
    prototypes = rng.integers(0, 2, (4, 28, 28)) * 200
    for folder, compress in ((raw, False), (fashion, True)):
        for prefix, n in (("train", 80), ("t10k", 20)):
            suffix = ".gz" if compress else ""
            images = prototypes[rng.integers(0, 4, n)] + rng.integers(0, 56, (n, 28, 28))
            write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
            write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (n,)), compress)
    images = root / "images"
    images.mkdir()
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / f"{i}.png")
    # data=tensors: binary 8x8 images around four prototypes, one array and its labels.
    labels = rng.integers(0, 4, 200)
    flips = rng.random((200, 1, 8, 8)) < 0.05
    np.savez(
        root / "tensors.npz", images=(rng.integers(0, 2, (4, 1, 8, 8))[labels] ^ flips).astype(np.uint8), labels=labels
    )
    return {
        "tensors": root / "tensors.npz",
        "binarized_mnist": root / "binarized_mnist.npz",
        "torchvision": root / "torchvision",
        "fashion": fashion,
        "images": images,
    }
