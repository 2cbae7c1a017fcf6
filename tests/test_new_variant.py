"""The README's recipe for a new variant, followed by a user: one class and one YAML in a folder
of their own (tests/example_variant), nothing in vaelab touched, trained with `python train.py`."""

import csv
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "tests" / "example_variant"
LATENT_DIM = 50  # size=base


def run_variant(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`python train.py` with the variant's module on PYTHONPATH and its configs on Hydra's search path."""
    pythonpath = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_example_variant_trains_with_its_own_objective(tmp_path):
    free_bits = 3.0  # nats per dimension: above every dimension's KL, so the floor is the whole KL term
    result = run_variant(
        [
            "model=free_bits_vae",
            f"model.free_bits={free_bits}",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=20",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks=none",
            "test=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    val = [row for row in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if row.get("val/elbo")]
    assert len(val) == 2
    for row in val:
        floored, kl = float(row["val/kl_floored"]), float(row["val/kl"])
        # The loss's KL term is the floor, not the true KL (a plain VAE's loss is recon + kl).
        assert floored == pytest.approx(LATENT_DIM * free_bits), row
        assert kl < floored, row
        assert float(row["val/loss"]) == pytest.approx(float(row["val/recon"]) + floored, rel=1e-5), row
        assert float(row["val/elbo"]) == pytest.approx(-(float(row["val/recon"]) + kl), rel=1e-5), row
    assert float(val[1]["val/elbo"]) > float(val[0]["val/elbo"]), val  # and it learns


def test_the_example_variants_own_check_refuses_a_bad_value_before_training(tmp_path):
    result = run_variant(["model=free_bits_vae", "model.free_bits=-1", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "error: model.free_bits must be ≥ 0 nats per latent dimension, got -1; set model.free_bits=<λ>"
    )
    assert not (tmp_path / "csv").exists() and not (tmp_path / "checkpoints").exists()  # nothing was trained
