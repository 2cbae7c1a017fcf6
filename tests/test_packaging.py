"""`pip install .` (not editable): the built wheel alone trains and evaluates, from an empty folder,
and a user's own config folder joins ours through Hydra's search path."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

ONE_BATCH = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
]


def pip(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this source tree."""
    pytest.importorskip("setuptools")  # the build backend (torch and tensorboard need it too, so the venv has it)
    root = tmp_path_factory.mktemp("packaging")
    # A copy of the source tree, so the build's build/ and *.egg-info stay out of the real one.
    tree = root / "tree"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    tree.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, tree / name, ignore=ignore)
    log = pip("wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(root / "wheels"), str(tree))
    # setuptools warns of a folder it copies without its being a listed package (a config group).
    assert "is absent from the `packages` configuration" not in log
    (wheel,) = (root / "wheels").glob("vaelab-*.whl")
    return wheel


@pytest.fixture(scope="module")
def site(wheel) -> Path:
    """The wheel installed into a folder of its own, away from the source tree."""
    site = wheel.parents[1] / "site"
    pip("install", "--no-deps", "--target", str(site), str(wheel))
    return site


def test_the_wheel_carries_every_config_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"vaelab/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    modules = {p.relative_to(ROOT / "src").as_posix() for p in (ROOT / "src").rglob("*.py")}
    assert sorted(configs - names) == [] and sorted(modules - names) == []


def run_installed(command: str, args: list[str], site: Path, cwd: Path) -> subprocess.CompletedProcess:
    """The console script ``command`` of the installed wheel, run from ``cwd``."""
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, str(site / "bin" / command), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_imports_from(site: Path) -> None:
    """The interpreter of run_installed finds vaelab in ``site``, not in the source
    tree that the development install puts on the path."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", "import vaelab; print(vaelab.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert Path(result.stdout.strip()).resolve().is_relative_to(site.resolve()), result.stdout


def test_the_wheel_trains_and_evaluates_from_an_empty_folder(site, tmp_path):
    assert_imports_from(site)
    result = run_installed("vaelab-train", ONE_BATCH, site, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    assert json.loads((run / "test_metrics.json").read_text())["test/elbo"] < 0

    result = run_installed(
        "vaelab-eval",
        [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "k=2", "chunk=2", "pictures=false"],
        site,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "outputs" / "eval" / "runs").iterdir())


def test_a_users_config_folder_adds_experiments_and_data_sets(site, tmp_path):
    mine = tmp_path / "myconf"
    (mine / "experiment").mkdir(parents=True)
    (mine / "data").mkdir()
    # A data set of the user's own, built on one of ours by the defaults list.
    (mine / "data" / "tiny.yaml").write_text("defaults:\n  - synthetic\n  - _self_\nnum_train: 64\nnum_eval: 32\n")
    (mine / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /data: tiny\ntask_name: mine\n"
        "trainer:\n  max_epochs: 1\n  limit_train_batches: 1\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    result = run_installed(
        "vaelab-train",
        [f"hydra.searchpath=[file://{mine}]", "experiment=mine", "trainer.enable_progress_bar=false"],
        site,
        cwd=work,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (work / "outputs" / "mine" / "runs").iterdir()
    config = (run / "config.yaml").read_text()
    assert "SyntheticDataModule" in config and "num_train: 64" in config and "max_epochs: 1" in config
