"""Checks of a composed config, run before anything is loaded or built, so a user's mistake
costs seconds and reads as one sentence (a ``UserError``) rather than a traceback. The checks of
what every run shares (data, trainer, likelihood, optimizer, callbacks, loggers, ...) are here,
with helpers (``require``, ``positive_int``, ...) for the rest: each model checks its own settings
in its class's ``check_config`` (``vaelab.models.base``), and ``vaelab.config.check_config`` runs
them all. This module imports no model, so the models can use its helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab.errors import UserError


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole_number(value: Any, key: str, minimum: int = 1) -> None:
    require(
        is_int(value) and value >= minimum, f"{key} must be a whole number ≥ {minimum}, got {value!r}; set {key}=<N>"
    )


def positive_int(value: Any, key: str) -> None:
    whole_number(value, key, 1)


def flag(value: Any, key: str) -> None:
    require(isinstance(value, bool), f"{key} must be true or false, got {value!r}")


def is_list(value: Any) -> bool:
    return isinstance(value, (list, ListConfig))


def is_target(value: Any) -> bool:
    """A config Hydra instantiates (``_target_``): a user's own strategy, profiler, ... object."""
    return OmegaConf.is_dict(value) and "_target_" in value


def check_file(path: Path | str, key: str, what: str) -> None:
    """``key`` names a file: a folder and a missing path each get their own message."""
    require(
        not Path(path).is_dir(),
        f"{key}={path} is a folder; give the path of {what}, such as {Path(path) / 'checkpoints' / 'last.ckpt'}",
    )
    require(Path(path).is_file(), f"{key}={path} does not exist; give the path of {what}")


def check_data(data: DictConfig) -> None:
    positive_int(data.batch_size, "data.batch_size")
    if data.get("eval_batch_size") is not None:
        positive_int(data.eval_batch_size, "data.eval_batch_size")
    shape = data.image_shape
    require(
        len(shape) == 3 and all(is_int(s) and s >= 1 for s in shape),
        f"data.image_shape must be [channels, height, width] of positive integers, got {list(shape)}",
    )
    whole_number(data.get("overfit_batches", 0), "data.overfit_batches", 0)
    require(
        data.binarize in ("auto", "dynamic", "none"),
        f"data.binarize must be auto, dynamic or none, got {data.binarize!r}",
    )
    kind = data._target_.rsplit(".", 1)[-1]
    if "path" in data and data.path is None and kind != "DSpritesDataModule":  # dSprites without a file: drawn
        raise UserError("data.path is not set; point it at your data with data.path=<file or folder>")
    require(
        isinstance(data.get("on_device", False), bool) and isinstance(data.get("pin_memory", False), bool),
        "data.on_device and data.pin_memory must be true or false",
    )
    workers = data.get("num_workers", 0)
    require(is_int(workers) and workers >= 0, f"data.num_workers must be a whole number ≥ 0, got {workers!r}")
    require(
        not (data.get("on_device") and (workers or data.get("pin_memory"))),
        "data.on_device=true cuts batches on the GPU itself; drop data.num_workers and data.pin_memory "
        "(they are for data kept on the host)",
    )
    if "download" in data:
        flag(data.download, "data.download")
    if kind == "ImageFolderDataModule":
        require(shape[0] in (1, 3), f"data.image_shape[0] (channels) must be 1 or 3 for image_folder, got {shape[0]}")
        val, test = data.val_fraction, data.test_fraction
        require(
            is_number(val) and is_number(test) and val >= 0 and test >= 0 and val + test < 1,
            f"data.val_fraction and data.test_fraction must be ≥ 0 and leave images to train on (sum < 1), "
            f"got {val!r} and {test!r}",
        )
    if kind == "TorchvisionDataModule":
        names = ("mnist", "fashion_mnist", "cifar10", "celeba")
        require(
            data.name in names,
            f"data.name must be one of {', '.join(names)}, got {data.name!r}; "
            "choose data=<name> (or data=image_folder for other images)",
        )
        if data.name != "celeba":  # CelebA has its own validation split
            positive_int(data.val_size, "data.val_size")
    if kind == "SyntheticDataModule":
        for key in ("num_train", "num_eval", "num_prototypes"):
            positive_int(data[key], f"data.{key}")
        require(
            is_number(data.flip) and 0 <= data.flip <= 1,
            f"data.flip must be a probability in [0, 1], got {data.flip!r}",
        )
    if kind == "BinarizedMNISTDataModule":
        path = Path(data.path)
        require(
            path.suffix == ".npz" or path.is_dir() or not path.exists(),
            f"data.path={path} is a file but not a .npz; point data.path at binarized_mnist.npz "
            "or at a folder for the .amat files",
        )


def check_optimizer(optimizer: DictConfig) -> None:
    lr = optimizer.get("lr")
    require(lr is None or (is_number(lr) and lr > 0), f"model.optimizer.lr must be > 0, got {lr!r}")
    for key in ("eps", "weight_decay"):
        value = optimizer.get(key)
        require(value is None or (is_number(value) and value >= 0), f"model.optimizer.{key} must be ≥ 0, got {value!r}")
    betas = optimizer.get("betas")
    require(
        betas is None or (is_list(betas) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)),
        f"model.optimizer.betas must be two numbers in [0, 1), got {plain(betas)}",
    )
    if optimizer.get("fused") is not None:
        flag(optimizer.fused, "model.optimizer.fused")


def check_scheduler(scheduler: DictConfig | None) -> None:
    if scheduler is None:
        return
    require(
        is_target(scheduler) and scheduler.get("_partial_") is True,
        f"model.scheduler must be null or a config with _target_ and _partial_: true (the optimizer is passed "
        f"in), got {plain(scheduler)!r}",
    )
    interval = scheduler.get("interval", "epoch")
    require(interval in ("epoch", "step"), f"model.scheduler.interval must be epoch or step, got {interval!r}")
    if str(scheduler._target_).endswith("ReduceLROnPlateau"):
        require(
            interval == "epoch",
            "model.scheduler ReduceLROnPlateau follows a validation metric; use model.scheduler.interval=epoch",
        )
        monitor = scheduler.get("monitor", "val/elbo")
        higher_is_better = any(word in monitor for word in ("elbo", "iwae_bound", "psnr", "ssim"))
        mode = scheduler.get("mode", "min")
        require(
            mode == ("max" if higher_is_better else "min"),
            f"model.scheduler.monitor={monitor} is {'higher' if higher_is_better else 'lower'} when better; "
            f"set model.scheduler.mode={'max' if higher_is_better else 'min'}",
        )
    lr_lambda = scheduler.get("lr_lambda")
    if OmegaConf.is_dict(lr_lambda) and str(lr_lambda.get("_target_")).endswith("IWAEPaperLR"):
        positive_int(lr_lambda.stages, "model.scheduler.lr_lambda.stages")


def plain(value: Any) -> Any:
    """A config value as the user wrote it, for a message."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def check_likelihood(lik: DictConfig, data_levels: int | None = None) -> None:
    require(
        lik.name in ("bernoulli", "gaussian"),
        f"likelihood.name must be bernoulli or gaussian, got {lik.name!r}; "
        "choose likelihood=bernoulli|gaussian|gaussian_learned",
    )
    if lik.name == "gaussian" and "num_levels" in lik and data_levels is not None:
        require(
            lik.num_levels == data_levels,
            f"likelihood.num_levels={lik.num_levels} but data.num_levels={data_levels}: "
            "the bits/dim offset must be the data's; drop likelihood.num_levels (it follows data.num_levels)",
        )
    if lik.name == "gaussian":
        require(is_number(lik.sigma) and lik.sigma > 0, f"likelihood.sigma must be > 0, got {lik.sigma!r}")
        require(
            lik.learn_sigma in ("none", "global", "pixel"),
            f"likelihood.learn_sigma must be none, global or pixel, got {lik.learn_sigma!r}",
        )


def check_kl_schedule(spec: DictConfig) -> None:
    names = ("constant", "linear", "cyclical", "capacity")
    require(
        spec.name in names,
        f"kl_schedule.name must be one of {', '.join(names)}, got {spec.name!r}; choose kl_schedule=<name>",
    )
    for key, value in spec.items():
        if key.endswith("epochs") and spec.get(key[: -len("epochs")] + "steps") is not None:
            continue  # a length given in steps: the epochs are not used
        if key.endswith("steps") or key.endswith("epochs") or key == "cycles":
            message = f"kl_schedule.{key} must be > 0, got {value!r}"
            if OmegaConf.is_interpolation(spec, key) and key.endswith("epochs"):
                message += (
                    f" (it follows trainer.max_epochs); set kl_schedule.{key[: -len('epochs')]}steps=<N> "
                    f"or kl_schedule.{key}=<N>"
                )
            require(value is None or (is_number(value) and value > 0), message)
    if spec.name == "cyclical":
        require(
            is_number(spec.ratio) and 0 < spec.ratio <= 1, f"kl_schedule.ratio must be in (0, 1], got {spec.ratio!r}"
        )
    if spec.name == "capacity":
        require(is_number(spec.c_max) and spec.c_max >= 0, f"kl_schedule.c_max must be ≥ 0 nats, got {spec.c_max!r}")
        require(is_number(spec.gamma) and spec.gamma >= 0, f"kl_schedule.gamma must be ≥ 0, got {spec.gamma!r}")


ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true")
# What else Lightning takes: older spellings and NVIDIA's Transformer Engine.
OTHER_PRECISIONS = (64, 32, 16, "64", "32", "16", "bf16", "transformer-engine", "transformer-engine-float16")


def check_devices(devices: Any, accelerator: Any) -> None:
    require(
        devices == "auto"
        or (is_int(devices) and (devices >= 1 or devices == -1))
        or (is_list(devices) and len(devices) >= 1 and all(is_int(d) and d >= 0 for d in devices)),
        f"trainer.devices must be a number of devices ≥ 1, -1 (all), auto or a list of device indices, "
        f"got {plain(devices)}",
    )
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        wanted = max(devices) + 1 if is_list(devices) else devices if is_int(devices) and devices >= 1 else 1
        visible = torch.cuda.device_count()
        require(
            wanted <= visible,
            f"trainer.accelerator={accelerator} and trainer.devices={plain(devices)} ask for "
            f"{wanted} GPU{'s' * (wanted > 1)} but {visible} {'is' if visible == 1 else 'are'} visible; "
            + (f"set trainer.devices={visible} or fewer" if visible else "use trainer=cpu"),
        )
    elif accelerator == "cpu":
        require(
            devices == "auto" or (is_int(devices) and devices >= 1),
            f"trainer.devices must be a number of processes ≥ 1 with trainer.accelerator=cpu, got {plain(devices)}",
        )


def check_batch_limit(trainer: DictConfig, key: str, minimum: int) -> None:
    """A fraction of the batches, or a number of them (Lightning's limit_*_batches, overfit_batches)."""
    value = trainer.get(key)
    if value is None:
        return
    fraction = isinstance(value, float) and (0 < value <= 1 if minimum else 0 <= value <= 1)
    require(
        fraction or (is_int(value) and value >= minimum),
        f"trainer.{key} must be a fraction in {'(0, 1]' if minimum else '[0, 1]'} or a whole number of batches "
        f"≥ {minimum}, got {value!r}",
    )


def check_trainer(trainer: DictConfig, model: DictConfig) -> None:
    epochs = trainer.get("max_epochs")
    require(
        epochs is None or (is_int(epochs) and (epochs >= 1 or epochs == -1)),
        f"trainer.max_epochs must be ≥ 1 (or -1 for no limit), got {epochs!r}",
    )
    steps = trainer.get("max_steps")
    require(
        steps is None or (is_int(steps) and (steps >= 1 or steps == -1)),
        f"trainer.max_steps must be ≥ 1 (or -1 for no limit), got {steps!r}",
    )
    accelerator = trainer.get("accelerator", "auto")
    require(
        is_target(accelerator) or accelerator in ACCELERATORS,
        f"trainer.accelerator must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}; "
        "choose trainer=cpu or trainer=gpu",
    )
    check_devices(trainer.get("devices", "auto"), accelerator)
    strategy = trainer.get("strategy", "auto")
    if not is_target(strategy) and strategy != "auto":
        from lightning.pytorch.strategies import StrategyRegistry

        require(
            strategy in StrategyRegistry,
            f"trainer.strategy must be auto or one of Lightning's strategies "
            f"(ddp, ddp_spawn, fsdp, deepspeed, ...), got {strategy!r}; choose trainer=ddp for several devices",
        )
    if trainer.get("num_nodes") is not None:
        positive_int(trainer.num_nodes, "trainer.num_nodes")
    precision = trainer.get("precision")
    require(
        precision is None or precision in PRECISIONS + OTHER_PRECISIONS,
        f"trainer.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}",
    )
    if trainer.get("log_every_n_steps") is not None:
        positive_int(trainer.log_every_n_steps, "trainer.log_every_n_steps")
    if trainer.get("check_val_every_n_epoch") is not None:
        positive_int(trainer.check_val_every_n_epoch, "trainer.check_val_every_n_epoch")
    check_batch_limit(trainer, "limit_train_batches", 1)  # 0 would train nothing
    check_batch_limit(trainer, "limit_val_batches", 0)
    check_batch_limit(trainer, "limit_test_batches", 0)
    for key in ("enable_progress_bar", "enable_model_summary", "enable_checkpointing"):
        if trainer.get(key) is not None:
            flag(trainer[key], f"trainer.{key}")
    deterministic = trainer.get("deterministic")
    require(
        deterministic in (None, True, False, "warn"),
        f"trainer.deterministic must be true, false or warn, got {deterministic!r}",
    )
    fast = trainer.get("fast_dev_run", False)
    require(
        isinstance(fast, bool) or (is_int(fast) and fast >= 1),
        f"trainer.fast_dev_run must be true, false or a number of batches ≥ 1, got {fast!r}",
    )
    profiler = trainer.get("profiler")
    require(
        is_target(profiler) or profiler in (None, "simple", "advanced", "pytorch"),
        f"trainer.profiler must be null, simple, advanced or pytorch, got {profiler!r}",
    )
    positive_int(trainer.get("accumulate_grad_batches", 1), "trainer.accumulate_grad_batches")
    require(
        not trainer.get("overfit_batches"),
        "trainer.overfit_batches does not fit these in-memory data sets; "
        "use debug=overfit (or data.overfit_batches=<N>)",
    )
    algorithm = trainer.get("gradient_clip_algorithm")
    require(
        algorithm in (None, "norm", "value"),
        f"trainer.gradient_clip_algorithm must be norm or value, got {algorithm!r}",
    )
    clip = trainer.get("gradient_clip_val")
    require(
        clip is None or (is_number(clip) and clip >= 0), f"trainer.gradient_clip_val must be ≥ 0 or null, got {clip!r}"
    )
    # A fused optimizer unscales 16-bit gradients inside its step, after the point where they are clipped.
    require(
        not (clip and str(trainer.get("precision")).startswith("16") and (model.get("optimizer") or {}).get("fused")),
        "trainer.gradient_clip_val under 16-bit precision needs an optimizer that is not fused; "
        "set model.optimizer.fused=false",
    )


def check_callbacks(callbacks: DictConfig | None) -> None:
    callbacks = callbacks or {}
    if callbacks.get("model_checkpoint") is not None:
        node = callbacks.model_checkpoint
        require(
            node.get("mode", "min") in ("min", "max"),
            f"callbacks.model_checkpoint.mode must be min or max, got {node.get('mode')!r}",
        )
        whole_number(node.get("save_top_k", 1), "callbacks.model_checkpoint.save_top_k", -1)
    if callbacks.get("image_grids") is not None:
        # Half of num_images are inputs shown beside their reconstructions.
        whole_number(callbacks.image_grids.num_images, "callbacks.image_grids.num_images", 2)
        positive_int(callbacks.image_grids.every_n_epochs, "callbacks.image_grids.every_n_epochs")
    if callbacks.get("encoder_gradient_variance") is not None:
        node = callbacks.encoder_gradient_variance
        require(
            is_int(node.num_draws) and (node.num_draws == 0 or node.num_draws >= 2),
            f"callbacks.encoder_gradient_variance.num_draws must be 0 (off) or a whole number ≥ 2, got "
            f"{node.num_draws!r}; a variance needs two draws",
        )
        positive_int(node.batch_size, "callbacks.encoder_gradient_variance.batch_size")
        positive_int(node.every_n_epochs, "callbacks.encoder_gradient_variance.every_n_epochs")
    if callbacks.get("disentanglement") is not None:
        node = callbacks.disentanglement
        whole_number(node.every_n_epochs, "callbacks.disentanglement.every_n_epochs", 0)
        # Fewer points leave some factor value unsampled (MIG needs every factor to vary).
        whole_number(node.num_points, "callbacks.disentanglement.num_points", 200)
        check_dci_points(node.dci_points, "callbacks.disentanglement.dci_points")
    if callbacks.get("early_stopping") is not None:
        node = callbacks.early_stopping
        require(
            node.get("mode", "min") in ("min", "max"),
            f"callbacks.early_stopping.mode must be min or max, got {node.get('mode')!r}",
        )
        whole_number(node.get("patience", 3), "callbacks.early_stopping.patience", 0)
        require(
            is_number(node.get("min_delta", 0.0)) and node.get("min_delta", 0.0) >= 0,
            f"callbacks.early_stopping.min_delta must be a number ≥ 0, got {node.get('min_delta')!r}",
        )
    if callbacks.get("model_summary") is not None:
        whole_number(callbacks.model_summary.get("max_depth", 1), "callbacks.model_summary.max_depth", -1)
    if callbacks.get("progress_bar") is not None:
        whole_number(callbacks.progress_bar.get("refresh_rate", 1), "callbacks.progress_bar.refresh_rate", 0)


def check_dci_points(value: Any, key: str) -> None:
    """The points DCI's trees learn from: null (all) or enough for a train/test split."""
    require(
        value is None or (is_int(value) and value >= 20),
        f"{key} must be null (all points) or a whole number ≥ 20, got {value!r}",
    )


def check_loggers(loggers: DictConfig | None) -> None:
    """The logger group of train.py and eval.py."""
    loggers = loggers or {}
    if loggers.get("wandb") is not None:
        wandb = loggers.wandb
        require(
            wandb.get("offline") in ("auto", True, False),
            f"logger.wandb.offline must be auto, true or false, got {wandb.get('offline')!r}",
        )
        require(
            wandb.get("log_model", False) in (True, False, "all"),
            f"logger.wandb.log_model must be true, false or all, got {wandb.get('log_model')!r}",
        )
    if loggers.get("tensorboard") is not None:
        flag(loggers.tensorboard.get("default_hp_metric", True), "logger.tensorboard.default_hp_metric")


def check_ckpt_path(ckpt_path: str | None) -> None:
    if ckpt_path in (None, "last"):
        return
    check_file(ckpt_path, "ckpt_path", "a .ckpt file")


def check_seed(seed: Any) -> None:
    """An integer seed, or null for one drawn at random (vaelab.config.choose_seed draws it
    before this check runs, so a null never reaches the run)."""
    require(
        is_int(seed) and 0 <= seed < 2**32,
        f"seed must be an integer from 0 to {2**32 - 1} (or null for a random one), got {seed!r}",
    )


def check_extras(cfg: DictConfig) -> None:
    tags = cfg.get("tags")
    require(
        tags is None or (is_list(tags) and all(isinstance(t, str) and t for t in tags)),
        f"tags must be a list of words, e.g. tags=[baseline,mnist], got {plain(tags)!r}",
    )
    flag((cfg.get("extras") or {}).get("print_config", False), "extras.print_config")
