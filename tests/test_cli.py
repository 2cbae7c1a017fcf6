"""`python train.py ...` as a user types it, in a subprocess."""

import csv
import json

import pytest
import yaml

from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow


def test_default_run_leaves_a_complete_run_folder(tmp_path):
    result = run_cli(["trainer.max_epochs=2", "trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
    for path in (
        "config.yaml",
        ".hydra/config.yaml",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/metrics.csv",
        "images/reconstructions_epoch001.png",
        "images/samples_epoch001.png",
    ):
        assert (run / path).is_file(), path
    metrics = json.loads((run / "test_metrics.json").read_text())
    # 8x8 binarized digits: a model that learned nothing is near -64 ln 2 = -44.4 nats.
    assert metrics["test/elbo"] > -40, metrics
    val = [float(r["val/elbo"]) for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("val/elbo")]
    assert len(val) == 2 and val[1] > val[0]  # and it still improves
    assert f"run folder: {run}" in result.stdout + result.stderr


def test_user_mistake_prints_one_line_and_exits_2(tmp_path):
    result = run_cli(["data.batch_size=0"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: data.batch_size must be a whole number ≥ 1, got 0; set data.batch_size=<N>"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_unknown_option_names_the_choices_without_a_traceback(tmp_path):
    result = run_cli(["model=nonexistent"], cwd=tmp_path)
    assert result.returncode == 1
    assert "Could not find 'model/nonexistent'" in result.stderr and "vae" in result.stderr
    assert "Traceback" not in result.stderr


def test_wandb_resume_continues_the_same_run(tmp_path):
    run = tmp_path / "run"
    first = run_cli(
        [
            "logger=wandb",
            "data=synthetic",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    # Offline without a key: the run is written for a later `wandb sync`, and the user is told so.
    (offline,) = (run / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb"))
    assert "wandb sync" in first.stdout + first.stderr
    second = run_cli(
        [
            "logger=wandb",
            "data=synthetic",
            "trainer.max_epochs=2",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={run}",
            "ckpt_path=last",
        ],
        cwd=tmp_path,
    )
    assert second.returncode == 0, second.stderr[-2000:]
    run_id = (run / "wandb_run_id").read_text().strip()
    offline_runs = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline_runs)


def test_ddp_inside_a_multirun_runs_every_job_in_its_own_folder(tmp_path):
    result = run_cli(
        [
            "-m",
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "model.beta=1,2",
            "data=synthetic",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    for job, beta in (("0", 1.0), ("1", 2.0)):
        assert (sweep / job / "train_ddp_process_1.log").is_file()  # the second process ran this job, not a new sweep
        metrics = json.loads((sweep / job / "test_metrics.json").read_text())
        assert yaml.safe_load((sweep / job / "config.yaml").read_text())["model"]["beta"] == beta
        # Each job trained on its own setting: the loss it logged weighs the KL by its beta.
        assert metrics["test/loss"] == pytest.approx(metrics["test/recon"] + beta * metrics["test/kl"], rel=1e-4)
    assert not (tmp_path / "outputs" / "train" / "runs").exists()
    report = (sweep / "report.md").read_text()
    assert report.count("\n") == 4  # header, rule, two jobs


CRASHING_TRAIN = '''"""train.py whose training step crashes, as running out of memory does, when model.beta is 2."""
from vaelab.models import VAE
from vaelab.training import main

step = VAE.training_step


def training_step(self, batch, batch_idx):
    if self.beta == 2:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\\nand more lines")
    return step(self, batch, batch_idx)


VAE.training_step = training_step
main()
'''


def test_a_crashed_job_is_recorded_and_does_not_end_the_sweep(tmp_path):
    script = tmp_path / "crashing_train.py"
    script.write_text(CRASHING_TRAIN)
    args = ["data=synthetic", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]
    # Job 1 crashes in training; job 2 is a user's mistake, refused before training; the others run.
    result = run_cli(["-m", *args, "model.beta=1,2,-1,4"], cwd=tmp_path, script=str(script))
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert (sweep / "0" / "test_metrics.json").is_file() and (sweep / "3" / "test_metrics.json").is_file()
    assert (
        sweep / "1" / "FAILED"
    ).read_text() == "crashed: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
    assert "model.beta must be" in (sweep / "2" / "FAILED").read_text()
    report = (sweep / "report.md").read_text()
    assert "failed: crashed: RuntimeError: CUDA out of memory" in report
    assert "failed: error: model.beta must be" in report
    assert "Traceback" in result.stderr  # where it crashed is still shown
    # A single run shows its traceback and exits non-zero, as before.
    single = run_cli([*args, "model.beta=2"], cwd=tmp_path, script=str(script))
    assert single.returncode == 1 and "RuntimeError: CUDA out of memory" in single.stderr


def test_an_optuna_sweep_goes_on_past_a_failed_trial(tmp_path):
    conf = ROOT / "tests" / "conf"
    result = run_cli(
        [
            f"hydra.searchpath=[file://{conf}]",
            "hparams_search=optuna_with_a_failure",
            "data=synthetic",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
        ],
        cwd=tmp_path,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    failed = sorted(p.parent.name for p in sweep.glob("*/FAILED"))
    completed = sorted(p.parent.name for p in sweep.glob("*/test_metrics.json"))
    assert len(failed) == 1 and len(completed) == 2
    assert "model.beta must be a number ≥ 0, got -1" in (sweep / failed[0] / "FAILED").read_text()
    assert "best_value" in (sweep / "optimization_results.yaml").read_text()


NOISELESS_TRAIN = """
from vaelab.distributions import DiagonalGaussian

DiagonalGaussian.rsample = lambda self, num_samples=None: self.mu  # z = mu: no sampling noise
from vaelab.training import main

main()
"""


def test_two_process_ddp_matches_one_process_with_the_same_global_batch(tmp_path):
    """Same seed, same global batch (64). The data's noise is drawn per global batch, so with the
    posterior's sampling switched off (z = mu) the two runs are the same computation: the mean of
    the two processes' half-batch means is the global mean. They agree to rounding after three
    epochs; examples weighted unequally, or gradients summed instead of averaged, would not."""
    script = tmp_path / "noiseless_train.py"
    script.write_text(NOISELESS_TRAIN)
    args = [
        "data=synthetic",
        "data.batch_size=64",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "seed=3",
        "test=false",
        "trainer.log_every_n_steps=4",
    ]
    elbo, per_step = {}, {}
    for devices in (1, 2):
        # The two-process run in the default run folder (a new timestamped one): both processes
        # must write into that one run, not one each.
        folder = [f"hydra.run.dir={tmp_path / 'd1'}"] if devices == 1 else []
        result = run_cli(
            [*args, "trainer=ddp_cpu", f"trainer.devices={devices}", *folder], cwd=tmp_path, script=str(script)
        )
        assert result.returncode == 0, result.stderr[-2000:]
        if devices == 1:
            run = tmp_path / "d1"
        else:
            (run,) = (tmp_path / "outputs" / "train" / "runs").iterdir()
        assert len(list((run / "images").glob("samples_*.png"))) == 3  # rank 0 drew each epoch's grid
        rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
        elbo[devices] = [float(r["val/elbo"]) for r in rows if r.get("val/elbo")]
        # The per-step curve is the global batch's mean, not rank 0's half of it.
        per_step[devices] = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
        steps = [int(r["step"]) for r in rows if r.get("val/elbo")][-1]
        assert steps == 3 * 512 // 64 - 1  # the same number of optimizer steps: the batch is global
    assert elbo[1][-1] > elbo[1][0] + 1  # it trained
    assert elbo[2] == pytest.approx(elbo[1], abs=1e-3), elbo
    assert len(per_step[1]) == 6 and per_step[2] == pytest.approx(per_step[1], abs=1e-3), per_step
