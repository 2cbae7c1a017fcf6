"""`python train.py ...` as a user types it, in a subprocess."""

import json

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow


def test_default_run_leaves_a_complete_run_folder(tmp_path):
    result = run_cli(["trainer.max_epochs=2", "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    for path in ("config.yaml", ".hydra/config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "csv/metrics.csv", "images/reconstructions_epoch001.png", "images/samples_epoch001.png"):
        assert (run / path).is_file(), path
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert -80 < metrics["test/elbo"] < 0  # 8x8 binarized digits: 64 pixels, so -ELBO < 64 ln 2 ≈ 44 when trained
    assert f"run folder: {run}" in result.stdout + result.stderr


def test_user_mistake_prints_one_line_and_exits_2(tmp_path):
    result = run_cli(["data.batch_size=0"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: data.batch_size must be a whole number ≥ 1, got 0; set data.batch_size=<N>")
    assert "Traceback" not in result.stdout + result.stderr


def test_unknown_option_names_the_choices_without_a_traceback(tmp_path):
    result = run_cli(["model=nonexistent"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'model/nonexistent'" in result.stderr and "vae" in result.stderr
    assert "Traceback" not in result.stderr


def test_ddp_on_two_cpu_processes(tmp_path):
    result = run_cli(["trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=2", "data=synthetic",
                      "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "train" / "runs").iterdir())
    assert len(runs) == 1  # the second process wrote into the same run, not a new one
    metrics = json.loads((runs[0] / "test_metrics.json").read_text())
    assert metrics["test/elbo"] < 0
    assert len(list((runs[0] / "images").glob("samples_*.png"))) == 2


def test_wandb_offline_without_a_key(tmp_path):
    result = run_cli(["logger=wandb", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    assert "wandb sync" in result.stdout + result.stderr


def test_multirun_runs_every_job_in_its_own_folder(tmp_path):
    result = run_cli(["-m", "model=beta_vae", "model.beta=1,4", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    betas = []
    for job in ("0", "1"):
        metrics = json.loads((sweep / job / "test_metrics.json").read_text())
        config = (sweep / job / "config.yaml").read_text()
        betas.append([line for line in config.splitlines() if line.strip().startswith("beta:")][0].split()[-1])
        assert metrics["test/loss"] == pytest.approx(metrics["test/recon"] + float(betas[-1]) * metrics["test/kl"], rel=1e-4)
    assert [float(b) for b in betas] == [1.0, 4.0]
