"""The training loop's own work: optimizer steps, learning-rate schedules, gradient clipping, and the
switches of how batches reach the model (workers, pinned memory, data on the device, channels-last)."""

import lightning as L
import pytest
import torch

import vaelab.building as building
from vaelab.building import instantiate_model
from vaelab.config import compose_config
from vaelab.training import train

QUICK = ["data=synthetic", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "test=false"]
STEPS_PER_EPOCH = 512 // 64  # data=synthetic


def train_with(callback, cfg):
    original = building.build_callbacks
    building.build_callbacks = lambda c: [*original(c), callback]
    try:
        return train(cfg)
    finally:
        building.build_callbacks = original


def test_the_learning_rate_schedule_steps_once_per_epoch(tmp_path):
    schedule = "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
    seen = []

    class LearningRates(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    train_with(LearningRates(), compose_config([*QUICK, "trainer.max_epochs=3", schedule], tmp_path))
    assert seen == pytest.approx([1e-3, 5e-4, 2.5e-4])
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 3 * STEPS_PER_EPOCH  # one optimizer step per batch


def test_gradients_are_clipped_to_trainer_gradient_clip_val(tmp_path):
    norms = []

    class GradientNorm(L.Callback):
        # After the step the gradients are still there (they are cleared at the next step's start).
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))

    train_with(
        GradientNorm(), compose_config([*QUICK, "trainer.max_epochs=1", "trainer.gradient_clip_val=0.5"], tmp_path)
    )
    assert len(norms) == STEPS_PER_EPOCH and max(norms) <= 0.5 + 1e-5
    # Without the limit the same model's gradients are far larger: the clip did something.
    norms.clear()
    train_with(GradientNorm(), compose_config([*QUICK, "trainer.max_epochs=1"], tmp_path / "free"))
    assert min(norms) > 1.0


def test_workers_pinned_memory_and_data_on_the_device_give_the_same_run(tmp_path):
    """On a CPU machine on_device keeps the data where it is and pin_memory has nothing to pin, so
    all three runs must end bit-for-bit where the default run ends (synthetic data needs no
    random binarization, so workers draw nothing)."""
    args = [*QUICK, "trainer.max_epochs=2", "seed=3"]
    reference = train(compose_config(args, tmp_path / "default"))["val/elbo"]
    for i, switch in enumerate((["data.num_workers=2"], ["data.pin_memory=true"], ["data.on_device=true"])):
        assert train(compose_config([*args, *switch], tmp_path / str(i)))["val/elbo"] == reference, switch


def test_channels_last_changes_the_memory_layout_not_the_numbers(tmp_path):
    cfg = compose_config([*QUICK, "net=conv", "data=digits"], tmp_path)
    plain = instantiate_model(cfg.model)
    nhwc = instantiate_model(cfg.model)
    nhwc.load_state_dict(plain.state_dict())
    nhwc.to(memory_format=torch.channels_last)
    conv = next(m for m in nhwc.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(16, 1, 8, 8).round()
    torch.manual_seed(0)
    loss_a, _ = plain.step_metrics(x)
    torch.manual_seed(0)
    loss_b, _ = nhwc.step_metrics(x.contiguous(memory_format=torch.channels_last))
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5)
    # And a run with the switch trains, and its checkpoint loads into a model built the usual way.
    metrics = train(
        compose_config([*QUICK, "net=conv", "model.channels_last=true", "trainer.max_epochs=1"], tmp_path / "run")
    )
    usual = train(compose_config([*QUICK, "net=conv", "trainer.max_epochs=1"], tmp_path / "usual"))
    assert metrics["val/elbo"] == pytest.approx(usual["val/elbo"], rel=1e-4)  # the same training, another layout
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    instantiate_model(cfg.model).load_state_dict(state)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, monkeypatch):
    """accumulate_grad_batches=4 at batch 16 takes the same optimizer steps as batch 64: the same
    images per step, the mean of the four batch means. The posterior's noise is switched off
    (z = mu) so the two runs' losses do not differ by their samples."""
    from vaelab.distributions import DiagonalGaussian

    monkeypatch.setattr(DiagonalGaussian, "rsample", lambda self, num_samples=None: self.mu)
    weights = []
    for run, overrides in (
        ("big", ["data.batch_size=64"]),
        ("accumulated", ["data.batch_size=16", "trainer.accumulate_grad_batches=4"]),
    ):
        folder = tmp_path / run
        train(compose_config([*QUICK, "trainer.max_epochs=2", "trainer.limit_val_batches=1", *overrides], folder))
        state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
        assert state["global_step"] == 2 * STEPS_PER_EPOCH  # one optimizer step per 64 images
        weights.append(state["state_dict"])
    for name in weights[0]:
        torch.testing.assert_close(weights[1][name], weights[0][name], atol=2e-5, rtol=1e-4, msg=name)


def test_reduce_lr_on_plateau_follows_its_monitored_metric(tmp_path):
    """A patience of 0 and a threshold no epoch can meet: after the first validation (which sets the
    best value) the rate halves after every validation."""
    schedule = (
        "model.scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true,mode:max,"
        "factor:0.5,patience:0,threshold:1000,threshold_mode:abs,monitor:val/elbo}"
    )
    seen = []

    class LearningRates(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    train_with(
        LearningRates(),
        compose_config([*QUICK, "trainer.max_epochs=3", "trainer.limit_val_batches=1", schedule], tmp_path),
    )
    assert seen == pytest.approx([1e-3, 1e-3, 5e-4])


def test_a_per_step_schedule_steps_after_every_optimizer_step(tmp_path):
    schedule = (
        "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.9,interval:step}"
    )
    seen = []

    class LearningRates(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    train_with(
        LearningRates(),
        compose_config([*QUICK, "trainer.max_epochs=2", "trainer.limit_val_batches=1", schedule], tmp_path),
    )
    assert seen == pytest.approx([1e-3 * 0.9**i for i in range(2 * STEPS_PER_EPOCH)])
