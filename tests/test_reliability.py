"""Runs that survive crashes and bad numbers: atomic checkpoints, non-finite guards, exact resume."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import vaelab.building as building
from conftest import run_cli
from test_resume_runs import final_metrics
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.models import VAE
from vaelab.reliability import AtomicCheckpointIO, TrainingStopped
from vaelab.training import train

QUICK = ["data=synthetic", "trainer.enable_progress_bar=false"]


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    import lightning.fabric.plugins.io.torch_io as torch_io

    def crash(checkpoint, filepath):
        with open(filepath, "wb") as f:
            f.write(b"half a checkpo")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch_io, "_atomic_save", crash)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    assert torch.load(path, weights_only=False) == {"step": 1}


def poison(monkeypatch, at_step: int, term: str = "kl"):
    """Make ``term`` (and so the loss) NaN at one training step."""
    original = VAE.objective
    poisoned = []

    def objective(self, x):
        out = original(self, x)
        # Once: a skipped step does not advance global_step, so the next batch has the same step.
        if self.training and self.global_step == at_step and not poisoned:
            poisoned.append(at_step)
            out[term] = out[term] * float("nan")
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(VAE, "objective", objective)


def test_a_nan_loss_stops_the_run_naming_the_step_and_term(tmp_path, monkeypatch):
    poison(monkeypatch, at_step=20)  # synthetic data: 8 steps an epoch, so in the third epoch
    with pytest.raises(TrainingStopped, match=r"step 20: the loss is nan \(kl = nan\); training stopped"):
        train(compose_config([*QUICK, "trainer.max_epochs=4"], tmp_path))
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 16  # the end of the second epoch: the last good state
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_a_nan_loss_is_skipped_when_asked(tmp_path, monkeypatch):
    poison(monkeypatch, at_step=5)
    metrics = train(compose_config([*QUICK, "trainer.max_epochs=2", "nonfinite=skip"], tmp_path))
    assert metrics["train/skipped_steps"] == 1.0
    assert all(v == v for v in metrics.values())


class NaNGradient(L.Callback):
    """Turns one parameter's gradient to NaN at one step (the loss stays finite)."""

    def __init__(self, at_step):
        self.at_step = at_step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step == self.at_step and not getattr(self, "done", False):
            self.done = True
            pl_module.decoder.net[0].weight.grad[0, 0] = float("nan")


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_nan_gradient_stops_or_skips(tmp_path, monkeypatch, policy):
    original = building.build_callbacks
    monkeypatch.setattr(building, "build_callbacks", lambda cfg: [*original(cfg), NaNGradient(3)])
    cfg = compose_config([*QUICK, "trainer.max_epochs=1", f"nonfinite={policy}"], tmp_path)
    if policy == "stop":
        with pytest.raises(TrainingStopped, match=r"step 3: non-finite gradient in decoder.net.0.weight"):
            train(cfg)
    else:
        metrics = train(cfg)
        assert metrics["train/skipped_steps"] == 1.0
        weights = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in weights.values())


def test_resuming_with_another_models_checkpoint_is_refused(tmp_path):
    train(compose_config([*QUICK, "trainer.max_epochs=1"], tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    with pytest.raises(UserError, match=r"holds another model: model.latent_dim is 50 there and 16 here"):
        train(compose_config([*QUICK, "size=small", f"ckpt_path={ckpt}"], tmp_path / "b"))


def test_resuming_a_checkpoint_of_another_version_is_refused(tmp_path):
    train(compose_config([*QUICK, "trainer.max_epochs=1"], tmp_path / "a"))
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=False)
    state["vaelab"]["version"] = "9.0.0"
    torch.save(state, tmp_path / "old.ckpt")
    with pytest.raises(UserError, match=r"was written by vaelab 9.0.0, this is 0.1.0; resume it with that version"):
        train(compose_config([*QUICK, f"ckpt_path={tmp_path / 'old.ckpt'}"], tmp_path / "b"))


SIGTERM_AT_STEP = '''
import os
import signal
import sys

from vaelab.models import VAE

STEP = int(os.environ["SIGTERM_AT_STEP"])
RANK = int(os.environ.get("SIGTERM_RANK", 0))


def on_train_batch_start(self, batch, batch_idx):
    """A pre-emption signal at a fixed place in the middle of an epoch (not at a wall-clock time),
    to the process of rank RANK only."""
    if self.global_step == STEP and self.global_rank == RANK and not os.environ.get("SIGTERM_SENT"):
        os.environ["SIGTERM_SENT"] = "1"
        os.kill(os.getpid(), signal.SIGTERM)


VAE.on_train_batch_start = on_train_batch_start
from vaelab.training import main

main()
'''


UNINTERRUPTED: dict[int, Path] = {}  # the uninterrupted run of each accumulation, shared by its cases


@pytest.mark.slow
# (accumulated batches, the optimizer step at whose first batch the signal comes, (epoch, batches
# done) of the checkpoint): 8 batches an epoch. Step 11: epoch 1, batch 3. Step 4: epoch 1, batch
# 3, the first of the group 3-5, saved after batch 5. Step 5: epoch 1, batch 6, in the last group
# (6-7); its end is the epoch's last batch, so the save waits for epoch 2's first group.
# Without accumulation the stopped and resumed runs load their batches in a worker process, and must
# still end at the uninterrupted run (loaded in the main process).
@pytest.mark.parametrize("accumulate,step,saved_at,workers", [(1, 11, (1, 4), 1), (3, 4, (1, 6), 0), (3, 5, (2, 3), 0)])
def test_a_run_stopped_mid_epoch_resumes_exactly(tmp_path, accumulate, step, saved_at, workers):
    """SIGTERM in the middle of an epoch, then ckpt_path=last: the resumed run takes the rest of that
    epoch's batches with their noise, not the epoch again from its start, and ends where the
    uninterrupted run ends; the interrupted epoch's logged training means are those of all its
    batches. With accumulation the save waits for the group's optimizer step, and a save that would
    fall on an epoch's last batch (resumed by Lightning as a finished epoch) for the next step."""
    args = [*QUICK, "trainer.max_epochs=3", "seed=3", f"trainer.accumulate_grad_batches={accumulate}"]
    whole, stopped = UNINTERRUPTED.get(accumulate), tmp_path / "stopped"
    if whole is None:  # one uninterrupted run for each accumulation, shared by its cases
        whole = UNINTERRUPTED[accumulate] = tmp_path / "whole"
        assert run_cli([*args, f"hydra.run.dir={whole}"], cwd=tmp_path).returncode == 0
    args.append(f"data.num_workers={workers}")
    script = tmp_path / "preempted_train.py"
    script.write_text(SIGTERM_AT_STEP)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SIGTERM_AT_STEP": str(step)}
    first = subprocess.run(
        [sys.executable, str(script), *args, f"hydra.run.dir={stopped}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert first.returncode == 3 and "received SIGTERM" in first.stderr, first.stderr[-2000:]
    saved = torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    progress = saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"]
    assert (saved["epoch"], progress) == saved_at
    resumed = run_cli([*args, f"hydra.run.dir={stopped}", "ckpt_path=last"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = final_metrics(whole), final_metrics(stopped)
    for key in ("test/loss", "test/elbo", "test/recon", "test/kl"):
        assert b[key] == pytest.approx(a[key], rel=1e-6), key

    def epoch_means(run):
        rows = csv.DictReader(open(run / "csv" / "metrics.csv"))
        return {int(r["epoch"]): float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")}

    assert epoch_means(stopped) == pytest.approx(epoch_means(whole), rel=1e-6)
    assert sorted(epoch_means(stopped)) == [0, 1, 2]


POISON_RANK_1 = '''
import sys
from vaelab.models import VAE

original = VAE.objective
poisoned = []


def objective(self, x):
    """The loss is NaN once, at step 10 (the second epoch), on the process of rank 1 only."""
    out = original(self, x)
    if self.training and self.global_rank == 1 and self.global_step == 10 and not poisoned:
        poisoned.append(10)
        out["kl"] = out["kl"] * float("nan")
        out["loss"] = out["loss"] * float("nan")
    return out


VAE.objective = objective
from vaelab.training import main

main()
'''


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_under_ddp_every_process_takes_the_same_non_finite_decision(policy, tmp_path):
    """A NaN on one process only: a process that stopped or skipped alone would leave the other
    waiting in the gradient all-reduce (a hang, caught here by the time limit) or out of step."""
    from conftest import run_cli

    script = tmp_path / "poisoned_train.py"
    script.write_text(POISON_RANK_1)
    run = tmp_path / "run"
    result = run_cli(
        [
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "data=synthetic",
            "trainer.max_epochs=2",
            "test=false",
            "trainer.enable_progress_bar=false",
            "trainer.log_every_n_steps=1",
            f"nonfinite={policy}",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
        script=str(script),
        timeout=150,
    )
    if policy == "stop":
        assert result.returncode == 3, result.stderr[-2000:]
        assert "step 10: the loss is nan" in result.stderr
        assert (
            torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8
        )  # the last good state
    else:
        assert result.returncode == 0, result.stderr[-2000:]
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        assert last["global_step"] == 2 * 8 - 1  # 8 batches an epoch; the poisoned one skipped on both
        rows = list(csv.DictReader(open(run / "csv" / "metrics.csv")))
        assert [float(r["train/skipped_steps"]) for r in rows if r.get("train/skipped_steps")][-1] == 1.0


RECORD_NOISE = '''
import torch
import torch.distributed as dist
from vaelab.distributions import DiagonalGaussian

original = DiagonalGaussian.rsample
draws = []


def rsample(self, num_samples=None):
    """Saves the reparameterization noise of the third training batch of each process."""
    z = original(self, num_samples)
    if torch.is_grad_enabled():
        draws.append(((z - self.mu) / self.std).detach())
        if len(draws) == 3:
            torch.save(draws[-1], f"eps_rank{dist.get_rank()}.pt")
    return z


DiagonalGaussian.rsample = rsample
from vaelab.training import main

main()
'''


@pytest.mark.slow
def test_ddp_processes_draw_different_noise(tmp_path):
    """With the same seed on every process, row i of each process's share drew the same epsilon:
    a global batch of 64 on 2 processes had 32 independent draws."""
    from conftest import run_cli

    script = tmp_path / "recording_train.py"
    script.write_text(RECORD_NOISE)
    result = run_cli(
        [
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "data=synthetic",
            "trainer.max_epochs=1",
            "test=false",
            "trainer.enable_progress_bar=false",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        script=str(script),
        timeout=150,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    eps = [torch.load(tmp_path / f"eps_rank{rank}.pt") for rank in (0, 1)]
    assert eps[0].shape == eps[1].shape and eps[0].shape[0] == 32  # each process: half of the global batch of 64
    assert not torch.allclose(eps[0], eps[1])


def test_every_training_step_seeds_all_generators_from_seed_epoch_batch_and_rank(monkeypatch):
    """The noise of a step is a function of (seed, epoch, batch, rank) alone: a resumed run draws
    what the uninterrupted run drew without saved generator states, and the CUDA generators are
    seeded too (a GPU run resumes exactly as well; simulated: the suite has no GPU)."""
    from types import SimpleNamespace

    from vaelab.reliability import RandomStreams

    cuda_seeds = []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda_seeds.append(seed))
    streams = RandomStreams(seed=7)

    def draw(epoch, batch, rank):
        trainer = SimpleNamespace(current_epoch=epoch, global_rank=rank, sanity_checking=False)
        streams.on_train_batch_start(trainer, None, None, batch)
        return torch.randn(4)

    assert torch.equal(draw(1, 2, 0), draw(1, 2, 0))
    assert not torch.equal(draw(1, 2, 0), draw(1, 2, 1))
    assert not torch.equal(draw(1, 2, 0), draw(1, 3, 0)) and not torch.equal(draw(1, 2, 0), draw(2, 2, 0))
    assert len(cuda_seeds) == 8 and len(set(cuda_seeds)) == 4


def test_a_skipped_batch_leaves_no_gradient_behind_under_accumulation(tmp_path, monkeypatch):
    """accumulate_grad_batches=2, nonfinite=skip, a NaN loss at batch 2 (the first of the second
    group). With a loss of (batch + 1) * sum(w), the gradient of w at each step is known: group 0
    steps with (1 + 2) / 2 = 1.5; group 1 with batch 3's 4 / 2 = 2.0 alone, not 2.0 plus the 1.5
    that group 0 left in .grad."""
    from vaelab.models.base import GenerativeModel

    original_step = GenerativeModel.training_step

    def training_step(self, batch, batch_idx):
        self.batch_number = batch_idx
        return original_step(self, batch, batch_idx)

    def step_metrics(self, x):
        weight = next(self.parameters())
        number = getattr(self, "batch_number", 0) if self.training else 0  # validation: any finite loss
        scale = float("nan") if self.training and number == 2 else number + 1.0
        loss = weight.sum() * scale
        zero = loss.detach() * 0
        return loss, {"loss": loss.detach(), "recon": zero, "kl": zero}

    monkeypatch.setattr(GenerativeModel, "training_step", training_step)
    monkeypatch.setattr(VAE, "step_metrics", step_metrics)
    seen = []

    class Gradients(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            seen.append(next(pl_module.parameters()).grad.unique().tolist())

    overrides = [
        *QUICK,
        "nonfinite=skip",
        "trainer.accumulate_grad_batches=2",
        "trainer.limit_train_batches=4",
        "trainer.limit_val_batches=1",
        "trainer.max_epochs=1",
        "test=false",
    ]
    original = building.build_callbacks
    monkeypatch.setattr(building, "build_callbacks", lambda c: [*original(c), Gradients()])
    train(compose_config(overrides, tmp_path))
    assert seen == [[1.5], [2.0]]


@pytest.mark.slow
def test_under_ddp_a_signal_to_one_process_stops_all_at_the_same_step(tmp_path):
    """SIGTERM to the process of rank 1 only: both processes save and stop at the same step (the
    checkpoint is a collective: a process saving alone would wait for the other forever)."""
    script = tmp_path / "preempted_train.py"
    script.write_text(SIGTERM_AT_STEP)
    run = tmp_path / "run"
    args = [*QUICK, "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=4", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "SIGTERM_AT_STEP": "11", "SIGTERM_RANK": "1"}
    first = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=150
    )
    assert first.returncode == 3 and "received SIGTERM at step 12" in first.stderr, first.stderr[-2000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert (saved["epoch"], saved["global_step"]) == (1, 12)


def test_the_training_loader_resumes_after_the_batches_done_with_their_noise():
    """TrainLoader's state is the epoch's batches trained so far, none at an epoch's end (also when
    trainer.limit_train_batches trains fewer than the sampler has); loaded, the next iteration
    starts after them, each batch with the noise seed of the uninterrupted epoch."""
    from types import SimpleNamespace

    from vaelab.data.in_memory import ShardedBatchSampler, TrainLoader

    def loader_at(processed: int, num_training_batches: int) -> TrainLoader:
        loader = TrainLoader(
            list(range(100)), sampler=ShardedBatchSampler(100, 10, True, True, seed=1), batch_size=None
        )
        progress = SimpleNamespace(current=SimpleNamespace(processed=processed))
        loader.trainer = SimpleNamespace(
            num_training_batches=num_training_batches,
            fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)),
        )
        return loader

    assert loader_at(3, 10).state_dict() == {"batches_done": 3}
    assert loader_at(10, 10).state_dict() == {"batches_done": 0}
    assert loader_at(5, 5).state_dict() == {"batches_done": 0}  # limit_train_batches=0.5
    whole = list(loader_at(0, 10).sampler)
    resumed = loader_at(0, 10)
    resumed.load_state_dict({"batches_done": 3})
    rest = list(resumed.sampler)
    assert [b.noise_seed for b in rest] == [b.noise_seed for b in whole[3:]]
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(rest, whole[3:]))
    assert len(list(resumed.sampler)) == 10  # the skip is for the resumed epoch only


def test_an_epochs_checkpoint_keeps_its_training_sums_for_a_resume(tmp_path):
    """last.ckpt holds the epoch's metric sums so far, also when it is written at the end of a
    validation (here twice an epoch, so at the end of validation, not of the training epoch): at
    the epoch's end, over all its 512 training examples."""
    train(compose_config([*QUICK, "trainer.max_epochs=1", "test=false", "+trainer.val_check_interval=0.5"], tmp_path))
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["vaelab"]
    sums = saved["train_epoch_sums"]
    assert sums["count"] == 512 and "loss" in sums["names"] and saved["skipped_steps"] == 0


def test_a_run_resumed_at_an_epochs_end_logs_the_next_epochs_means_from_its_batches_only(tmp_path):
    """Resuming last.ckpt of a finished epoch (Lightning does not call on_train_epoch_start for the
    epoch after it): the next epoch's logged training means are the uninterrupted run's, not mixed
    with the saved epoch's sums."""

    def epoch_means(run):
        rows = csv.DictReader(open(run / "csv" / "metrics.csv"))
        return {int(r["epoch"]): float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")}

    args = [*QUICK, "test=false", "seed=5"]
    train(compose_config([*args, "trainer.max_epochs=3"], tmp_path / "whole"))
    train(compose_config([*args, "trainer.max_epochs=2"], tmp_path / "resumed"))
    train(compose_config([*args, "trainer.max_epochs=3", "ckpt_path=last"], tmp_path / "resumed"))
    whole, resumed = epoch_means(tmp_path / "whole"), epoch_means(tmp_path / "resumed")
    assert resumed[2] == pytest.approx(whole[2], rel=1e-6)
