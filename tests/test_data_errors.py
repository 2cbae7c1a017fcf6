"""Data sets that are not there, and checkpoints whose model cannot be imported: each is a user's
mistake told in one line, with nothing left behind in the folder the command was started from."""

import os
import re
import socket
import sys

import pytest
import torch

from conftest import run_cli
from test_new_variant import EXAMPLE, run_variant
from vaelab.checkpoints import load_checkpoint
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.training import train

TORCHVISION = ["mnist", "fashion_mnist", "cifar10", "celeba"]
# What every one of them says: what is missing, where it looked, what to do.
SHAPE = re.compile(
    r"(?P<name>\w+) not found under data\.root=data: it needs (?P<needs>data/\S+ [^;]+?)"
    r"(?P<failed>, and the download failed \([^()]+\))?; set data\.root=<folder with the files>, or (?P<todo>.+)"
)
WITH_A_NETWORK = "data.download=true with a network"
CELEBA_BY_HAND = (
    "download Img/img_align_celeba.zip (unzipped), Anno/*.txt and Eval/list_eval_partition.txt from "
    "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into data/celeba/ "
    "(data.download cannot: torchvision fetches CelebA with gdown, which vaelab does not install)"
)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("no network in the tests")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


def data_error(name: str, download: bool, tmp_path, monkeypatch) -> str:
    """The message of a training run on data set ``name`` with the default data.root, from an
    empty folder."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    monkeypatch.chdir(cwd)
    cfg = compose_config([f"data={name}", f"data.download={str(download).lower()}"], tmp_path / "run")
    with pytest.raises(UserError) as error:
        train(cfg)
    return str(error.value)


@pytest.mark.parametrize("download", [True, False], ids=["download", "no_download"])
@pytest.mark.parametrize("name", TORCHVISION)
def test_a_missing_torchvision_data_set_is_one_line_of_one_shape_and_leaves_no_folder(
    name, download, tmp_path, monkeypatch, no_network
):
    message = data_error(name, download, tmp_path, monkeypatch)
    assert "\n" not in message, message
    match = SHAPE.fullmatch(message)
    assert match, message
    assert match["name"] == name
    # a download is tried when asked for and possible (CelebA's needs gdown)
    assert bool(match["failed"]) == (download and name != "celeba"), message
    if match["failed"]:
        assert "no network in the tests" in match["failed"], message
    assert match["todo"] == (CELEBA_BY_HAND if name == "celeba" else WITH_A_NETWORK), message
    assert list((tmp_path / "cwd").iterdir()) == []  # no data/ (empty or not) left behind


def test_a_failed_download_keeps_the_users_own_empty_data_root(tmp_path, monkeypatch, no_network):
    (tmp_path / "cwd" / "data").mkdir(parents=True)
    message = data_error("mnist", True, tmp_path, monkeypatch)
    assert message.startswith("mnist not found under data.root=data: it needs data/MNIST/raw/ "), message
    assert (tmp_path / "cwd" / "data").is_dir() and list((tmp_path / "cwd" / "data").iterdir()) == []


@pytest.mark.slow
def test_eval_of_a_checkpoint_whose_model_cannot_be_imported_says_to_use_its_pythonpath(tmp_path):
    run = tmp_path / "run"
    trained = run_variant(
        [
            "model=free_bits_vae",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "trainer.limit_val_batches=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks=last_checkpoint",
            "test=false",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert str(EXAMPLE) not in os.environ.get("PYTHONPATH", "")
    result = run_cli(
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path / 'eval'}"],
        cwd=tmp_path,
        script="eval.py",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "error: the checkpoint's model class free_bits_vae.FreeBitsVAE cannot be imported; put the folder "
        "of its module on PYTHONPATH, as when it was trained"
    )
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_a_checkpoint_holding_an_object_of_an_unimportable_module_says_to_use_its_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "my_variant_types.py").write_text("class Setting:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_variant_types

    path = tmp_path / "last.ckpt"
    torch.save({"vaelab": {}, "state_dict": {}, "hyper_parameters": {"setting": my_variant_types.Setting()}}, path)
    monkeypatch.delitem(sys.modules, "my_variant_types")
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with pytest.raises(UserError) as error:
        load_checkpoint(str(path))
    assert str(error.value) == (
        f"{path} holds objects of module my_variant_types, which cannot be imported; put the folder of "
        "that module on PYTHONPATH, as when it was trained"
    )
