"""How every model is trained: the optimisation loop vaelab writes itself (Lightning's manual
optimisation), apart from what a model is (``vaelab.models.base``).

``TrainingLoop`` is the LightningModule half of every model: the optimizer step with gradient
accumulation and clipping, the non-finite guard (one decision for all processes), batch-size
weighted epoch sums, scheduler stepping, validation and test logging, the run config and the
epoch's sums in checkpoints, and new optimizer settings on a resumed run. Its methods marked
``@final`` are the loop: a model that defines one of them is refused when its class is made.
A model may extend ``on_fit_start``, ``on_train_start`` and ``on_before_optimizer_step``,
calling ``super()``. What the loop asks of a model is in ``GenerativeModel``: ``step_metrics``
(the loss and the batch means to log), ``with_derived`` and ``eval_metrics``."""

from __future__ import annotations

import math
import typing
import warnings
from typing import TYPE_CHECKING, Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from vaelab.checks import SCHEDULER_DEFAULTS
from vaelab.errors import UserError
from vaelab.reliability import TrainingStopped
from vaelab.version import __version__

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import ReduceLROnPlateau


class WeightedSums:
    """Batch-size-weighted running sums of scalar metrics, one tensor add per step."""

    def __init__(self):
        self.names: list[str] = []
        self.sums: Tensor | None = None
        self.count = 0

    def add(self, metrics: dict[str, Tensor], batch_size: int) -> None:
        values = torch.stack(list(metrics.values())) * batch_size
        if self.sums is None:
            self.names, self.sums = list(metrics), values
        else:
            self.sums += values
        self.count += batch_size

    def totals(self, reduce: Callable[..., Tensor]) -> tuple[Tensor, Tensor]:
        """The sums and the number of examples over all processes, in one ``reduce(tensor,
        reduce_op="sum")`` (every process must call this)."""
        totals = reduce(torch.cat([self.sums, self.sums.new_tensor([self.count])]), reduce_op="sum")
        return totals[:-1], totals[-1]

    def state(self, reduce: Callable[..., Tensor]) -> dict | None:
        """What a checkpoint keeps of the sums: their totals over processes, so that the process
        that writes the file keeps all of them."""
        if self.sums is None:
            return None
        sums, count = self.totals(reduce)
        return {"names": self.names, "sums": sums.cpu(), "count": int(count)}

    @classmethod
    def from_state(cls, state: dict, device: torch.device | str, holds_them: bool) -> WeightedSums:
        """The sums of ``state`` on the process that ``holds_them``, zeros on the others (their
        sum over processes is then the saved one)."""
        sums = cls()
        sums.names = list(state["names"])
        sums.sums = state["sums"].to(device) if holds_them else torch.zeros_like(state["sums"], device=device)
        sums.count = state["count"] if holds_them else 0
        return sums

    def means(self, reduce: Callable[..., Tensor]) -> dict[str, Tensor]:
        """Means over the epoch and over all processes (every process must call this)."""
        if self.sums is None:
            return {}
        sums, count = self.totals(reduce)
        return dict(zip(self.names, sums / count))


def final(method: Callable) -> Callable:
    """A method of the loop that no model may define (typing.final for type checkers; marked
    here too, since typing.final leaves no mark before Python 3.11)."""
    method.__loop_final__ = True
    return typing.final(method)


class TrainingLoop(L.LightningModule):
    """The training loop every model shares; see the module docstring."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for klass in cls.__mro__:  # the class itself and any mixin before the loop in its bases
            if klass is TrainingLoop:
                break
            for name in vars(klass):
                if getattr(getattr(TrainingLoop, name, None), "__loop_final__", False):
                    raise TypeError(
                        f"{cls.__name__}.{name} overrides the training loop's {name}, which every model shares; "
                        "a model changes what it computes (step_metrics, its objective), not the loop"
                    )

    # How the model runs, as opposed to what it is: the defaults of a model built on its own
    # (tests, notebooks); train() sets them from the run's config through set_run_options.
    nonfinite = "stop"  # a non-finite loss or gradient: "stop" (raise) or "skip" the step
    gradient_clip_val: float | None = None
    gradient_clip_algorithm = "norm"
    accumulate_grad_batches = 1  # batches whose gradients make one optimizer step
    channels_last = False  # images() converts the batches (build_model converts the weights)
    run_config: dict | None = None  # the resolved run config, kept in every checkpoint
    skipped_steps = 0
    # From model.scheduler's own keys (configure_optimizers): step it every "epoch" or every "step";
    # the metric a ReduceLROnPlateau follows.
    scheduler_interval = SCHEDULER_DEFAULTS["interval"]
    scheduler_monitor = SCHEDULER_DEFAULTS["monitor"]
    _group_open = False  # inside an accumulation group: gradients added, its optimizer step to come
    _validated_this_epoch = False

    def __init__(self):
        super().__init__()
        # The optimizer step is written out in training_step (Lightning's manual optimization):
        # the automatic loop wraps every step in closures, a cost per step that a small model
        # feels (docs/measurements.md). Lightning still does the rest: gradient scaling
        # (manual_backward, LightningOptimizer.step), DDP gradient sync, optimizer state in
        # checkpoints.
        self.automatic_optimization = False

    @final
    def set_run_options(
        self,
        *,
        run_config: dict | None = None,
        nonfinite: str = "stop",
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str = "norm",
        accumulate_grad_batches: int = 1,
        channels_last: bool = False,
    ) -> None:
        """The trainer settings this model carries out itself (it optimises manually, so
        Lightning's clipping and accumulation are off) and the run config its checkpoints keep."""
        self.run_config = run_config
        self.nonfinite = nonfinite
        self.gradient_clip_val = gradient_clip_val
        self.gradient_clip_algorithm = gradient_clip_algorithm
        self.accumulate_grad_batches = accumulate_grad_batches
        self.channels_last = channels_last

    @final
    def optimizer_steps_per_epoch(self) -> int | None:
        """Optimizer steps in one training epoch, once the trainer knows the epoch's batches
        (None before: during the sanity check, or without a trainer)."""
        batches = self.trainer.num_training_batches
        if batches == float("inf") or batches is None:
            return None
        return math.ceil(int(batches) / self.accumulate_grad_batches)

    def on_fit_start(self) -> None:
        # Reset each epoch; created here too because a mid-epoch resume starts without that hook,
        # with the sums of the epoch's batches trained before the checkpoint.
        saved, self._saved_epoch_sums = getattr(self, "_saved_epoch_sums", None), None
        if saved is None:
            self.train_epoch_sums = WeightedSums()
        else:
            self.train_epoch_sums = WeightedSums.from_state(saved, self.device, self.trainer.is_global_zero)

    @final
    def images(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The images of a (images, labels) batch, in the model's memory layout."""
        x, _ = batch
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # A model of p(x|y) sets this: each of its steps is also given the batch's labels (``given``).
    conditional = False

    @final
    def given(self, labels: Tensor) -> dict[str, Tensor]:
        """What the model is conditioned on besides the images: ``{"y": labels}`` for a conditional
        model, nothing for the others (the keyword arguments of its ``step_metrics``)."""
        return {"y": labels} if self.conditional else {}

    @final
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        x = self.images(batch)
        loss, metrics = self.step_metrics(x, **self.given(batch[1]))
        optimizer = self.optimizers()
        if not self.loss_is_finite_everywhere(loss):
            optimizer.zero_grad(set_to_none=True)  # a skipped batch drops its group's gradients so far
            return self.nonfinite_loss(metrics)
        # Gradient accumulation: the gradients of a group of batches add up, each batch weighted by
        # 1 / (batches in its group), so a step follows the mean over the group's examples.
        first, size = self.accumulation_group(batch_idx)
        if batch_idx == first:
            optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss / size if size > 1 else loss)
        self.train_epoch_sums.add(metrics, x.shape[0])
        self._group_open = batch_idx + 1 < first + size
        if self._group_open:
            return loss  # more batches to add before the step
        step = self.global_step  # the step this loss belongs to (optimizer.step() advances it)
        if not self.gradients_are_finite():
            optimizer.zero_grad(set_to_none=True)
            return None  # skipped: a skipped step is not counted as a step
        optimizer.step()  # clips the gradients first (on_before_optimizer_step)
        if self.scheduler_interval == "step":
            self.lr_schedulers().step()
        # self.log costs about as much as a small model's step on a CPU, so the per-step curve goes
        # straight to the loggers every log_every_n_steps, from rank 0, as the mean over the
        # processes (each holds its share of the global batch; the shares are equal).
        if (step + 1) % self.trainer.log_every_n_steps == 0:
            if self.trainer.world_size > 1:
                means = self.trainer.strategy.reduce(torch.stack(list(metrics.values())), reduce_op="mean")
                metrics = dict(zip(metrics, means))
            if self.trainer.is_global_zero:
                values = {f"train/{k}": float(v) for k, v in self.with_derived(metrics).items()}
                for logger in self.loggers:
                    logger.log_metrics({**values, "epoch": self.current_epoch}, step=step)
        return loss

    @final
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning's own rows (val/*, train/*_epoch, lr-*) take their step from a count of batches,
        # which it raises by one after this hook; the per-step rows count optimizer steps. Kept
        # equal, so that every curve has one x-axis under gradient accumulation too.
        self.trainer.fit_loop.epoch_loop._batches_that_stepped = max(self.global_step - 1, 0)

    @final
    def accumulation_group(self, batch_idx: int) -> tuple[int, int]:
        """(first batch, number of batches) of the accumulation group of ``batch_idx``; the last
        group of an epoch may be shorter."""
        every = self.accumulate_grad_batches
        if every == 1:
            return batch_idx, 1
        first = batch_idx - batch_idx % every
        return first, min(every, int(self.trainer.num_training_batches) - first)

    @final
    def on_validation_model_zero_grad(self) -> None:
        # Lightning frees the gradients before every validation, because it is told to accumulate
        # nothing (vaelab accumulates itself); a validation inside a group (val_check_interval < 1)
        # must leave the group's gradients for its step.
        if not self._group_open:
            super().on_validation_model_zero_grad()

    def on_train_start(self) -> None:
        # Listed once: walking the module tree every step costs more than the check itself.
        self.trained_parameters = [p for p in self.parameters() if p.requires_grad]
        resumed, self._resumed_config = getattr(self, "_resumed_config", None), None
        if resumed is not None and self.run_config is not None:
            self.apply_new_settings(resumed.get("model") or {}, self.run_config["model"])
        group, self._saved_group_gradients = getattr(self, "_saved_group_gradients", None), None
        if group is not None:  # resumed inside an accumulation group: its gradients so far
            for name, parameter in self.named_parameters():
                if name in group:
                    parameter.grad = group[name].to(parameter.device)

    @final
    def apply_new_settings(self, theirs: dict, ours: dict) -> None:
        """A resumed run whose optimizer settings or schedule differ from its checkpoint's (a new
        ``model.optimizer.lr``; ``model.scheduler``; a schedule over ``trainer.max_epochs`` that was
        raised) goes on as though it had had the new settings from its start. Lightning has
        restored the saved optimizer (and the saved scheduler where the schedule is unchanged):
        the changed values are set on the optimizer, and a schedule that depends on them is built
        anew and stepped to where the run is. A ReduceLROnPlateau follows metrics, which cannot be
        replayed: an unchanged one keeps its restored state, a new one starts afresh."""
        new_optimizer = {k: v for k, v in (ours.get("optimizer") or {}).items() if not k.startswith("_")}
        old_optimizer = {k: v for k, v in (theirs.get("optimizer") or {}).items() if not k.startswith("_")}
        keys = sorted(
            k for k in new_optimizer.keys() | old_optimizer.keys() if new_optimizer.get(k) != old_optimizer.get(k)
        )
        new_schedule = ours.get("scheduler") != theirs.get("scheduler")
        if not keys and not new_schedule:
            return
        optimizer = self.optimizers().optimizer
        defaults = hydra.utils.instantiate(self.hparams.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))]).defaults
        configs = self.trainer.lr_scheduler_configs
        plateau = bool(configs) and isinstance(configs[0].scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        for group in optimizer.param_groups:
            for key in (k for k in keys if k not in group.get("own", ())):
                if key == "lr" and plateau and not new_schedule and old_optimizer.get("lr"):
                    # The plateau's reductions so far apply to the new base rate.
                    group["lr"] *= defaults["lr"] / old_optimizer["lr"]
                elif key in defaults and key in group:
                    group[key] = defaults[key]
        if configs and (new_schedule or ("lr" in keys and not plateau)):
            for group in optimizer.param_groups:
                own = "lr" in group.get("own", ())
                group["lr"] = group["initial_lr"] = group.get("initial_lr", group["lr"]) if own else defaults["lr"]
            with warnings.catch_warnings():  # stepping the new scheduler before any optimizer step
                warnings.simplefilter("ignore", UserWarning)
                scheduler = self.build_scheduler(optimizer)
                if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    position = self.global_step if self.scheduler_interval == "step" else self.current_epoch
                    for _ in range(position):
                        scheduler.step()
            configs[0].scheduler = scheduler
        elif not configs and new_schedule:  # the schedule was dropped: the constant rate
            for group in optimizer.param_groups:
                group["lr"] = group.get("initial_lr", group["lr"]) if "lr" in group.get("own", ()) else defaults["lr"]
        changed = [f"model.optimizer.{k}: {old_optimizer.get(k)} -> {new_optimizer.get(k)}" for k in keys]
        rates = sorted({group["lr"] for group in optimizer.param_groups})
        rank_zero_info(
            f"resumed with new settings ({'; '.join(changed + ['model.scheduler'] * new_schedule)}): they apply "
            f"as from the run's start, so the learning rate at epoch {self.current_epoch} is "
            f"{', '.join(f'{r:.6g}' for r in rates)}"
        )

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Lightning calls this after unscaling the gradients (16-bit mixed precision), so the
        # limit applies to the true gradients.
        if self.gradient_clip_val:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.gradient_clip_val,
                gradient_clip_algorithm=self.gradient_clip_algorithm,
            )

    @final
    def loss_is_finite_everywhere(self, loss: Tensor) -> bool:
        """Whether the loss is finite on every process. Under DDP the processes must take the same
        decision: one that skipped or stopped alone would leave the others waiting in the gradient
        all-reduce. (Gradients need no such vote: DDP has already averaged them.)"""
        if self.trainer.world_size == 1:
            return bool(torch.isfinite(loss))
        bad = self.trainer.strategy.reduce((~torch.isfinite(loss.detach())).float(), reduce_op="sum")
        return not bool(bad)

    @final
    def nonfinite_loss(self, metrics: dict[str, Tensor]) -> None:
        """Skip the step (no backward pass, no optimizer step), or stop naming the bad terms."""
        if torch.isfinite(metrics["loss"]):
            return self.stop_or_skip("the loss is not finite on another process")
        bad = [name for name, value in metrics.items() if name != "loss" and not torch.isfinite(value)]
        self.stop_or_skip(
            f"the loss is {metrics['loss'].item()} "
            f"({', '.join(f'{n} = {metrics[n].item()}' for n in bad) or 'no single term is non-finite'})"
        )

    @final
    def gradients_are_finite(self) -> bool:
        """False (nonfinite=skip) or a stop naming the parameters when a gradient is NaN or
        infinite. Under 16-bit mixed precision the gradient scaler already skips such steps and
        lowers its scale: overflow is expected there, so the scaler is left to it."""
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return True
        grads = [p.grad for p in self.trained_parameters if p.grad is not None]
        if not grads:
            return True
        # One fused pass over all gradients (GradScaler's own test), multiplying them by 1.
        found_nonfinite = torch.zeros(1, device=grads[0].device)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_nonfinite, torch.ones_like(found_nonfinite))
        if not found_nonfinite.item():
            return True
        bad = [name for name, p in self.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
        self.stop_or_skip(f"non-finite gradient in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
        return False

    @final
    def stop_or_skip(self, problem: str) -> None:
        """The ``nonfinite`` policy for a step whose numbers went bad: count it as skipped, or
        stop the run with a message naming the step and ``problem``."""
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return
        raise TrainingStopped(
            f"step {self.global_step}: {problem}; training stopped, the last good checkpoint is "
            "kept (set nonfinite=skip to skip such steps)"
        )

    @final
    def on_train_epoch_start(self) -> None:
        self.train_epoch_sums = WeightedSums()

    @final
    def on_train_epoch_end(self) -> None:
        # Lightning runs the epoch's validation before this hook, so its metrics are here.
        scheduler = self.lr_schedulers()
        if scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if self._validated_this_epoch:
                    self.step_on_plateau(scheduler)
                self._validated_this_epoch = False
            else:
                scheduler.step()
        metrics = self.train_epoch_means()
        if metrics:
            # Already reduced over processes, so identical on every rank: sync_dist is a no-op mean.
            self.log_dict(
                {f"train/{k}_epoch": v for k, v in metrics.items()}, on_step=False, on_epoch=True, sync_dist=True
            )
        if self.skipped_steps:
            self.log("train/skipped_steps", float(self.skipped_steps), on_epoch=True)

    @final
    def train_epoch_means(self) -> dict[str, Tensor]:
        """This epoch's training means so far, reduced over processes, with the metrics derived
        from them: what ``train/<name>_epoch`` logs at the epoch's end (a collective under DDP)."""
        means = self.train_epoch_sums.means(reduce=self.trainer.strategy.reduce)
        return self.with_derived(means) if means else {}

    @final
    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._validated_this_epoch = True

    @final
    def step_on_plateau(self, scheduler: ReduceLROnPlateau) -> None:
        """ReduceLROnPlateau steps with its monitored metric, in epochs that validated (the metric of
        an epoch that did not is the last validation's, not a new measurement)."""
        value = self.trainer.callback_metrics.get(self.scheduler_monitor)
        if value is not None:
            scheduler.step(value)
        elif any(name.startswith("val/") for name in self.trainer.callback_metrics):
            raise UserError(
                f"model.scheduler.monitor={self.scheduler_monitor} is not a logged metric; choose one of "
                f"{sorted(self.trainer.callback_metrics)}"
            )

    @final
    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> None:
        x, given = self.images(batch), self.given(batch[1])
        _, metrics = self.step_metrics(x, **given)
        metrics.update(self.eval_metrics(x, stage, **given))
        self.log_dict(
            {f"{stage}/{k}": v for k, v in self.with_derived(metrics).items()},
            on_step=False,
            on_epoch=True,
            batch_size=x.shape[0],
            sync_dist=True,
        )

    @final
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    @final
    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    @final
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """The run's resolved config travels with the weights, so eval.py can rebuild the data set
        and check that a file is one of ours. (No generator state: a step's random numbers are a
        function of its place in the run, see ``reliability.RandomStreams``.)"""
        checkpoint["vaelab"] = {"version": __version__, "config": self.run_config}
        fitting = self._trainer is not None and self.trainer.state.fn == "fit" and not self.trainer.sanity_checking
        if fitting and hasattr(self, "train_epoch_sums"):  # also at validation end (the epoch's checkpoints)
            # The current epoch's sums and the skipped steps so far, for a resume mid-epoch.
            checkpoint["vaelab"]["train_epoch_sums"] = self.train_epoch_sums.state(self.trainer.strategy.reduce)
            checkpoint["vaelab"]["skipped_steps"] = self.skipped_steps
            if self._group_open:
                # Written inside an accumulation group (a validation there): the group's gradients so
                # far, for its step after a resume. DDP has made them equal on every process.
                checkpoint["vaelab"]["group_gradients"] = {
                    name: p.grad.detach().cpu() for name, p in self.named_parameters() if p.grad is not None
                }

    @final
    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("vaelab", {})
        self._resumed_config = saved.get("config")  # its settings, for apply_new_settings
        self._saved_group_gradients = saved.get("group_gradients")
        theirs = ((saved.get("config") or {}).get("model") or {}).get("scheduler")
        ours = ((self.run_config or {}).get("model") or {}).get("scheduler")
        if theirs != ours and "lr_schedulers" in checkpoint:
            # Another schedule: apply_new_settings builds it; the saved state (maybe of another
            # class) is not loaded into it.
            checkpoint["lr_schedulers"] = []
        self._saved_epoch_sums = saved.get("train_epoch_sums")
        self.skipped_steps = saved.get("skipped_steps", 0)

    @final
    def configure_optimizers(self) -> Optimizer | dict[str, Any]:
        optimizer = hydra.utils.instantiate(self.hparams.optimizer)(params=self.optimizer_groups())
        if not self.hparams.scheduler:
            return optimizer
        scheduler = self.build_scheduler(optimizer)
        # The loop steps it (manual optimisation); the interval tells LearningRateMonitor when to log.
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """The parameter groups of the run's optimizer (``model.optimizer``): one of every
        parameter. A model whose part learns with its own settings (FactorVAE's discriminator)
        adds a group that sets them and names them in ``own``; a resumed run's new optimizer
        settings leave those (``apply_new_settings``)."""
        return [{"params": list(self.parameters())}]

    @final
    def build_scheduler(self, optimizer: Optimizer) -> Any:
        """``model.scheduler`` on ``optimizer``. Its ``interval`` and ``monitor`` are ours (when to
        step it, what a ReduceLROnPlateau follows); the rest builds the scheduler."""
        spec = dict(self.hparams.scheduler)
        self.scheduler_interval = spec.pop("interval", SCHEDULER_DEFAULTS["interval"])
        self.scheduler_monitor = spec.pop("monitor", SCHEDULER_DEFAULTS["monitor"])
        return hydra.utils.instantiate(spec)(optimizer=optimizer)
