"""Where two features meet: accumulation with mid-epoch validation, workers with resume, new
settings on a resumed run, the x-axis of logged curves. Each read back from what the run logged."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.training import train

# 512 synthetic examples in batches of 64: 8 training batches an epoch.
QUICK = [
    "data=synthetic",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "callbacks=[model_checkpoint,last_checkpoint]",
    "seed=5",
]


def test_metrics(run: Path) -> dict:
    return json.loads((run / "test_metrics.json").read_text())


test_metrics.__test__ = False  # a helper, not a test


def rows(run: Path) -> list[dict]:
    return list(csv.DictReader(open(run / "csv" / "metrics.csv")))


def weights(run: Path, name: str = "last.ckpt") -> dict:
    return torch.load(run / "checkpoints" / name, weights_only=False, map_location="cpu")["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-6, atol=1e-7, msg=key)


def test_a_validation_inside_an_accumulation_group_keeps_the_groups_gradients(tmp_path):
    """accumulate_grad_batches=3 with val_check_interval=0.5: the validation after batch 4 falls in
    the group of batches 3-5. Validating must not change training: the weights and the test metrics
    equal those of the same run validated only at epoch ends."""
    args = [*QUICK, "trainer.max_epochs=2", "trainer.accumulate_grad_batches=3"]
    train(compose_config([*args, "+trainer.val_check_interval=1.0"], tmp_path / "epoch_end"))
    train(compose_config([*args, "+trainer.val_check_interval=0.5"], tmp_path / "mid_epoch"))
    assert_same_weights(weights(tmp_path / "epoch_end"), weights(tmp_path / "mid_epoch"))
    assert test_metrics(tmp_path / "mid_epoch")["test/elbo"] == pytest.approx(
        test_metrics(tmp_path / "epoch_end")["test/elbo"], rel=1e-6
    )
    validated = [r for r in rows(tmp_path / "mid_epoch") if r.get("val/elbo")]
    assert len(validated) == 4  # twice an epoch


@pytest.mark.slow
def test_a_run_with_workers_resumes_exactly(tmp_path):
    """data.num_workers=1: a run stopped after epoch 1 and resumed trains epoch 2 in epoch 2's order
    with its noise (Lightning creates the resumed run's first iterator before it sets the sampler's
    epoch, and workers ask for indices at once), ending at the uninterrupted run's weights."""
    args = [*QUICK, "data.num_workers=1", "test=false"]
    train(compose_config([*args, "trainer.max_epochs=3"], tmp_path / "whole"))
    train(compose_config([*args, "trainer.max_epochs=2"], tmp_path / "resumed"))
    train(compose_config([*args, "trainer.max_epochs=3", "ckpt_path=last"], tmp_path / "resumed"))

    def epoch_means(run):
        return {int(r["epoch"]): float(r["train/loss_epoch"]) for r in rows(run) if r.get("train/loss_epoch")}

    assert epoch_means(tmp_path / "resumed") == pytest.approx(epoch_means(tmp_path / "whole"), rel=1e-6)
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "resumed"))


COSINE = (
    "model.scheduler={_target_:torch.optim.lr_scheduler.CosineAnnealingLR,_partial_:true,"
    "T_max:${trainer.max_epochs},eta_min:1.0e-4}"
)


def learning_rates(run: Path) -> list[float]:
    """lr-Adam as LearningRateMonitor logged it, once an epoch, in order."""
    return [float(r["lr-Adam"]) for r in rows(run) if r.get("lr-Adam")]


def test_a_resumed_run_takes_the_new_learning_rate(tmp_path):
    run = tmp_path / "run"
    train(compose_config([*QUICK, "trainer.max_epochs=2", "test=false"], run))
    train(
        compose_config([*QUICK, "trainer.max_epochs=3", "test=false", "ckpt_path=last", "model.optimizer.lr=1e-5"], run)
    )
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert saved["epoch"] == 2
    assert [g["lr"] for g in saved["optimizer_states"][0]["param_groups"]] == [1e-5]


def test_an_extended_run_follows_the_schedule_of_its_new_length(tmp_path):
    """A cosine over trainer.max_epochs, 3 epochs extended to 6: epochs 3-5 follow the cosine of a
    6-epoch run (the closed form), where the restored 3-epoch scheduler would climb back up."""
    run = tmp_path / "run"
    args = [*QUICK, "callbacks=[model_checkpoint,last_checkpoint,learning_rate_monitor]", COSINE, "test=false"]
    train(compose_config([*args, "trainer.max_epochs=3"], run))
    train(compose_config([*args, "trainer.max_epochs=6", "ckpt_path=last"], run))
    cosine = [1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * e / 6)) / 2 for e in range(6)]
    first_three = [1e-4 + (1e-3 - 1e-4) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]
    assert learning_rates(run) == pytest.approx(first_three + cosine[3:], rel=1e-6)


def test_a_run_resumed_without_its_schedule_keeps_the_new_constant_rate(tmp_path):
    """docs/results.md's IWAE continuation: a cosine run resumed with model.scheduler=null and a new
    learning rate trains its remaining epochs at that rate, with no scheduler left to move it."""
    run = tmp_path / "run"
    train(compose_config([*QUICK, COSINE, "trainer.max_epochs=2", "test=false"], run))
    overrides = ["ckpt_path=last", "trainer.max_epochs=4", "model.scheduler=null", "model.optimizer.lr=1e-4"]
    train(compose_config([*QUICK, "test=false", *overrides], run))
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert saved["epoch"] == 3 and not saved.get("lr_schedulers")
    assert [g["lr"] for g in saved["optimizer_states"][0]["param_groups"]] == [1e-4]
    assert saved["vaelab"]["config"]["model"]["scheduler"] is None


def test_a_resumed_run_refuses_another_optimizer(tmp_path):
    run = tmp_path / "run"
    train(compose_config([*QUICK, "trainer.max_epochs=1", "test=false"], run))
    with pytest.raises(
        UserError,
        match=r"model.optimizer._target_=torch.optim.SGD: .* resume with model.optimizer._target_=torch.optim.Adam",
    ):
        train(
            compose_config(
                [
                    *QUICK,
                    "trainer.max_epochs=2",
                    "ckpt_path=last",
                    "model.optimizer._target_=torch.optim.SGD",
                    "~model.optimizer.fused",
                ],
                run,
            )
        )


def test_a_finished_run_is_not_resumed_with_the_same_length(tmp_path):
    run = tmp_path / "run"
    train(compose_config([*QUICK, "trainer.max_epochs=2"], run))
    before = (run / "test_metrics.json").read_text()
    with pytest.raises(UserError, match="nothing is left to train; raise trainer.max_epochs"):
        train(compose_config([*QUICK, "trainer.max_epochs=2", "ckpt_path=last"], run))
    assert (run / "test_metrics.json").read_text() == before


def test_under_accumulation_every_curve_counts_optimizer_steps(tmp_path):
    """accumulate_grad_batches=2: 8 batches, 4 optimizer steps an epoch. The per-step rows, the
    validation rows, the epoch means and a per-step schedule's learning rate share one x-axis, the
    optimizer step: the rate halves at every optimizer step and is logged once for each."""
    run = tmp_path / "run"
    args = ["trainer.max_epochs=2", "trainer.accumulate_grad_batches=2", "trainer.log_every_n_steps=1", "test=false"]
    halving = (
        "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5,interval:step}"
    )
    monitor = "callbacks=[model_checkpoint,last_checkpoint,learning_rate_monitor]"
    train(compose_config([*QUICK, *args, halving, monitor], run))
    logged = rows(run)
    per_step = [int(r["step"]) for r in logged if r.get("train/loss")]
    assert per_step == list(range(8))
    assert [int(r["step"]) for r in logged if r.get("val/elbo")] == [3, 7]  # the epochs' last steps
    assert [int(r["step"]) for r in logged if r.get("train/loss_epoch")] == [3, 7]
    rates = [(int(r["step"]), float(r["lr-Adam"])) for r in logged if r.get("lr-Adam")]
    assert rates == [(step, pytest.approx(1e-3 * 0.5**step, rel=1e-9)) for step in range(8)]


def test_a_resumed_run_takes_a_schedule_of_another_class(tmp_path):
    """Cosine for 2 epochs, resumed to 4 with StepLR (step 1, gamma 0.5): the saved cosine state is
    not loaded into the StepLR; epochs 2 and 3 run at the StepLR's rates for those epochs."""
    run = tmp_path / "run"
    args = [*QUICK, "callbacks=[model_checkpoint,last_checkpoint,learning_rate_monitor]", "test=false"]
    train(compose_config([*args, COSINE, "trainer.max_epochs=2"], run))
    step = "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
    train(compose_config([*args, step, "trainer.max_epochs=4", "ckpt_path=last"], run))
    assert learning_rates(run)[2:] == pytest.approx([1e-3 * 0.5**2, 1e-3 * 0.5**3], rel=1e-6)


class CopyCheckpointAtValidation:
    """Copies last.ckpt as it is after the ``n``-th validation (a run killed just after it)."""

    def __init__(self, run: Path, n: int, to: Path):
        self.run, self.n, self.to, self.seen = run, n, to, 0

    def __call__(self, trainer, pl_module):
        self.seen += 1
        if self.seen == self.n:
            self.to.write_bytes((self.run / "checkpoints" / "last.ckpt").read_bytes())


def test_a_run_resumed_from_a_validation_inside_an_accumulation_group_is_exact(tmp_path, monkeypatch):
    """accumulate_grad_batches=3, val_check_interval=0.5: last.ckpt is written at the validation
    after batch 4, inside the group 3-5. Resumed from it, the run ends at the uninterrupted run's
    weights: the group's gradients so far travel in the checkpoint."""
    import lightning as L

    import vaelab.building as building

    args = [*QUICK, "trainer.max_epochs=2", "trainer.accumulate_grad_batches=3", "+trainer.val_check_interval=0.5"]
    whole, copy = tmp_path / "whole", tmp_path / "mid_group.ckpt"
    copier = CopyCheckpointAtValidation(whole, 3, copy)  # epoch 1's first validation: after its batch 4
    hook = type("Copier", (L.Callback,), {"on_validation_end": lambda self, t, m: copier(t, m)})()
    original = building.build_callbacks
    monkeypatch.setattr(building, "build_callbacks", lambda c: [*original(c), hook])
    train(compose_config([*args, "test=false"], whole))
    monkeypatch.setattr(building, "build_callbacks", original)
    saved = torch.load(copy, weights_only=False, map_location="cpu")
    assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["processed"] == 4
    assert saved["vaelab"]["group_gradients"]  # batch 3's gradients, of the group 3-5
    resumed = tmp_path / "resumed"
    train(compose_config([*args, "test=false", f"ckpt_path={copy}"], resumed))
    assert_same_weights(weights(whole), weights(resumed))
