"""Runs killed or stopped by a signal and resumed end where the uninterrupted run ends (apart from
test_reliability.py so that the two test workers share the slow runs)."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, run_cli
from vaelab.curves import read_curves

QUICK = ["data=synthetic", "trainer.enable_progress_bar=false"]


def checkpointed_epoch(path):
    """Epoch of the checkpoint at `path`, -1 while there is none (it is renamed into place whole)."""
    try:
        return torch.load(path, weights_only=False, map_location="cpu")["epoch"]
    except FileNotFoundError:
        return -1


def final_metrics(run):
    return json.loads((run / "test_metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("model", ["beta_vae", "vqvae"])  # the VAE with a KL schedule; a codebook's state
def test_killed_and_resumed_run_ends_where_the_uninterrupted_run_ends(tmp_path, model):
    """SIGKILL at a random moment after the first checkpoint, resume with ckpt_path=last: the final
    metrics equal the uninterrupted run's. Tolerance: 1e-6 relative (same operations on the same
    CPU; only float summation order could differ, and it does not)."""
    epochs = 6  # the kill lands in epoch 1 or 2, so 4 or more epochs run after the resume
    schedule = ["kl_schedule=linear"] if model == "beta_vae" else []  # the only model a KL schedule applies to
    args = [*QUICK, f"model={model}", f"trainer.max_epochs={epochs}", *schedule, "seed=7", "size=small"]
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    assert run_cli([*args, f"hydra.run.dir={whole}"], cwd=tmp_path).returncode == 0
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args, f"hydra.run.dir={interrupted}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    last = interrupted / "checkpoints" / "last.ckpt"
    # Kill at a random point inside a random early epoch. Waiting for that epoch's checkpoint (not
    # for wall-clock time) keeps the kill early on any machine, however fast.
    target_epoch = random.randint(1, epochs // 3)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and checkpointed_epoch(last) < target_epoch:
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 0.05))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = checkpointed_epoch(last)
    assert 0 <= killed_at < epochs - 1 and not (interrupted / "test_metrics.json").exists(), "killed too late to test"
    resumed = run_cli([*args, f"hydra.run.dir={interrupted}", "ckpt_path=last"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_metrics(whole), final_metrics(interrupted)
    keys = ("test/loss", "test/elbo", "test/recon") + (
        ("test/perplexity", "test/codes_used") if model == "vqvae" else ("test/kl",)
    )
    for key in keys:
        assert b[key] == pytest.approx(a[key], rel=1e-6), key
    # The resumed run's log continues the first one's: every epoch's validation row is there.
    rows = (interrupted / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    logged_epochs = {
        int(r.split(",")[header.index("epoch")]) for r in rows[1:] if r.split(",")[header.index("val/elbo")]
    }
    assert logged_epochs == set(range(epochs))
    # Its learning curves too: every epoch's training means and validation, as the whole run's.
    whole_curves, resumed_curves = (read_curves(run / "curves.csv") for run in (whole, interrupted))
    assert [(r["split"], r["epoch"]) for r in resumed_curves] == [(r["split"], r["epoch"]) for r in whole_curves]
    assert {r["epoch"] for r in resumed_curves if r["split"] == "train"} == set(range(1, epochs + 1))
    for a_row, b_row in zip(whole_curves, resumed_curves):
        numbers = [key for key in a_row if key != "split"]
        assert [b_row[k] for k in numbers] == pytest.approx([a_row[k] for k in numbers], rel=1e-6), (a_row, b_row)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *QUICK, "trainer.max_epochs=40", f"hydra.run.dir={run}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    last = run / "checkpoints" / "last.ckpt"
    while not last.exists() and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "stopped: received SIGTERM at step" in stderr and f"hydra.run.dir={run} ckpt_path=last" in stderr
    state = torch.load(last, weights_only=False)
    assert state["global_step"] >= 8  # saved at the signal, after the first epoch-end checkpoint
    # The printed command, as the user would paste it: the run's own overrides, its folder, last.
    command = shlex.split(stderr.strip().splitlines()[-1].split("resume with ", 1)[1])
    assert command[:2] == ["python", "train.py"] and command[2:] == [
        *QUICK,
        "trainer.max_epochs=40",
        f"hydra.run.dir={run}",
        "ckpt_path=last",
    ]
    resumed = run_cli(command[2:], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # Trained to the end: synthetic 8x8 images of 4 prototypes with 5% of pixels flipped, so
    # log p(x) >= -(log 4 + 64 H(0.05)) = -14.1 nats; an untrained model is near -64 ln 2 = -44.4.
    assert json.loads((run / "test_metrics.json").read_text())["test/elbo"] > -25
    too_few = run_cli([*QUICK, "trainer.max_epochs=2", f"hydra.run.dir={run}", "ckpt_path=last"], cwd=tmp_path)
    assert too_few.returncode == 2 and "nothing is left to train; raise trainer.max_epochs" in too_few.stderr
