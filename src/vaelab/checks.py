"""Checks of a composed config, run before anything is loaded or built, so a user's mistake
costs seconds and reads as one sentence (a ``UserError``) rather than a traceback. The checks of
what every run shares (data, trainer, likelihood, optimizer, callbacks, loggers, ...) are here,
with helpers (``require``, ``positive_int``, ...) for the rest: each model checks its own settings
in its class's ``check_config`` (``vaelab.models.base``), and ``vaelab.config.check_config`` runs
them all. ``check_targets`` imports every ``_target_`` and checks the keys given to it against its
signature; ``set_by_user`` tells a value the user set (on the command line, or in an experiment)
from the config files' own, for the settings refused where they cannot have an effect. This module
imports no model, so the models can use its helpers."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from vaelab import app
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
    interval = scheduler.get("interval", SCHEDULER_DEFAULTS["interval"])
    require(interval in ("epoch", "step"), f"model.scheduler.interval must be epoch or step, got {interval!r}")
    name = str(scheduler._target_).rsplit(".", 1)[-1]
    require(
        "monitor" not in scheduler or name == "ReduceLROnPlateau",
        f"model.scheduler.monitor has no effect on {name}: only ReduceLROnPlateau follows a metric; "
        "drop model.scheduler.monitor",
    )
    if name == "ReduceLROnPlateau":
        require(
            interval == "epoch",
            "model.scheduler ReduceLROnPlateau follows a validation metric; use model.scheduler.interval=epoch",
        )
        monitor = scheduler.get("monitor", SCHEDULER_DEFAULTS["monitor"])
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


def check_trainer(trainer: DictConfig, model: DictConfig, cfg: DictConfig | None = None) -> None:
    """Lightning's trainer arguments that need more than their type (``check_targets`` checks every
    key's name and type against lightning.Trainer). ``cfg``: the whole run config, to tell the
    values a user set from the config files' own."""
    for key, group in (("logger", "logger"), ("callbacks", "callbacks")):
        require(
            key not in trainer,
            f"trainer.{key} is made from the {group} group; choose {group}="
            + ("<name> (logger=none for none)" if key == "logger" else "[...] (callbacks=none for none)")
            + f" and drop trainer.{key}",
        )
    require(
        "plugins" not in trainer,
        "trainer.plugins is vaelab's (its checkpoint writer); drop trainer.plugins",
    )
    require(
        not trainer.get("barebones"),
        "trainer.barebones=true turns off the checkpoints, loggers and progress bar that vaelab's runs use; "
        "drop it (callbacks=none logger=none make a lean run)",
    )
    require(
        not trainer.get("use_distributed_sampler"),
        "trainer.use_distributed_sampler=true would shard batches that the data modules already share out "
        "across processes; leave it false",
    )
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
    require(
        clip or cfg is None or not set_by_user(cfg, "trainer.gradient_clip_algorithm"),
        "trainer.gradient_clip_algorithm has no effect without trainer.gradient_clip_val; "
        "set trainer.gradient_clip_val=<limit> or drop it",
    )
    for key, minimum in (("num_sanity_val_steps", -1), ("reload_dataloaders_every_n_epochs", 0)):
        if trainer.get(key) is not None:
            whole_number(trainer[key], f"trainer.{key}", minimum)
    check_batch_limit(trainer, "limit_predict_batches", 0)
    interval = trainer.get("val_check_interval")
    require(
        interval is None
        or (isinstance(interval, float) and 0 < interval <= 1)
        or (is_int(interval) and interval >= 1)
        or is_duration(interval),
        "trainer.val_check_interval must be a fraction of an epoch in (0, 1], a whole number of batches ≥ 1 "
        f"or a time such as 00:01:30:00 (DD:HH:MM:SS), got {plain(interval)!r}",
    )
    max_time = trainer.get("max_time")
    require(
        max_time is None or is_duration(max_time),
        "trainer.max_time must be a time such as 00:12:00:00 (DD:HH:MM:SS) or "
        f"{{days: D, hours: H, minutes: M, seconds: S}}, got {plain(max_time)!r}",
    )
    # A fused optimizer unscales 16-bit gradients inside its step, after the point where they are clipped.
    require(
        not (clip and str(trainer.get("precision")).startswith("16") and (model.get("optimizer") or {}).get("fused")),
        "trainer.gradient_clip_val under 16-bit precision needs an optimizer that is not fused; "
        "set model.optimizer.fused=false",
    )


def is_duration(value: Any) -> bool:
    """A length of time as Lightning reads one: "DD:HH:MM:SS", or a dict of timedelta's arguments."""
    if isinstance(value, str):
        return re.fullmatch(r"\d+:\d+:\d+:\d+", value) is not None
    units = ("weeks", "days", "hours", "minutes", "seconds", "milliseconds", "microseconds")
    return OmegaConf.is_dict(value) and len(value) > 0 and all(k in units and is_number(v) for k, v in value.items())


def check_callbacks(callbacks: DictConfig | None) -> None:
    callbacks = callbacks or {}
    if callbacks.get("model_checkpoint") is not None:
        node = callbacks.model_checkpoint
        require(
            node.get("mode", "min") in ("min", "max"),
            f"callbacks.model_checkpoint.mode must be min or max, got {node.get('mode')!r}",
        )
        whole_number(node.get("save_top_k", 1), "callbacks.model_checkpoint.save_top_k", -1)
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


def check_seeds(cfg: DictConfig) -> None:
    """The seeds of the parts of a run (``data.seed``, ``data.split_seed``, ``model.quantizer.seed``,
    ...): integers in the range of the run's own seed (NumPy and torch refuse others mid-run)."""
    for path in paths_of_keys(cfg, lambda key: key == "seed" or key.endswith("_seed")):
        if "." in path:  # the run's own seed has its message in check_seed
            value = OmegaConf.select(cfg, path)
            require(
                is_int(value) and 0 <= value < 2**32,
                f"{path} must be an integer from 0 to {2**32 - 1}, got {plain(value)!r}",
            )


def paths_of_keys(cfg: DictConfig, wanted: Any) -> list[str]:
    """The dotted path of every key of the config (walked as written) for which ``wanted(key)``."""
    found = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                path = f"{prefix}.{key}" if prefix else str(key)
                if wanted(str(key)):
                    found.append(path)
                walk(value, path)

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return found


# -- every _target_, and the arguments it is given ------------------------------------------------


def check_targets(cfg: DictConfig, skip: tuple[str, ...] = ()) -> None:
    """Every node that Hydra instantiates names an importable class or function, and each of its keys
    is an argument that it takes, of a type its annotation allows (where the annotation is plain:
    bool, int, float, str, a Literal, or null). ``skip``: nodes checked elsewhere (the model)."""
    for target_path in paths_of_keys(cfg, lambda key: key == "_target_"):
        path = target_path.removesuffix("._target_")
        if path in skip or target_path == "_target_":
            continue
        node = OmegaConf.select(cfg, path)
        found = locate(node._target_, path)
        ours = SCHEDULER_KEYS if path == "model.scheduler" else VAELAB_REWRITES.get(path, ())
        check_arguments(node, path, found, f"an argument of {node._target_}", ours)


# Keys that vaelab reads (or rewrites) itself before the object is built: a scheduler's, with
# their defaults (when the loop steps it, what a ReduceLROnPlateau follows).
SCHEDULER_DEFAULTS = {"interval": "epoch", "monitor": "val/elbo"}
SCHEDULER_KEYS = tuple(SCHEDULER_DEFAULTS)
VAELAB_REWRITES = {"logger.wandb": ("offline",)}


def locate(target: Any, path: str) -> Any:
    """The class or function that ``<path>._target_`` names, with a one-line error for a name that
    cannot be imported. A module that is there but fails to import (something it imports is
    missing) raises its own error: its traceback says what is missing."""

    def refuse(reason: str) -> None:
        raise UserError(
            f"{path}._target_={target} cannot be imported ({reason}); give the module.name of a class or function"
        )

    parts = str(target).split(".")
    if not all(parts):
        refuse("it is not a dotted name")
    try:
        found = importlib.import_module(parts[0])
    except ModuleNotFoundError as e:
        if e.name != parts[0]:
            raise
        refuse(f"there is no module {parts[0]}")
    for i, part in enumerate(parts[1:], 1):
        if hasattr(found, part):
            found = getattr(found, part)
            continue
        module = ".".join(parts[: i + 1])
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            close = difflib.get_close_matches(part, [n for n in dir(found) if not n.startswith("_")], 1)
            refuse(f"{'.'.join(parts[:i])} has no {part}" + (f"; did you mean {close[0]}?" if close else ""))
    if not callable(found):
        refuse(f"{target} is a {type(found).__name__}, not a class or function")
    return found


def check_arguments(node: DictConfig, path: str, found: Any, what: str, ours: tuple[str, ...] = ()) -> None:
    """Each key of ``node`` (but Hydra's ``_..._`` keys and ``ours``) is a keyword argument of
    ``found`` (``what`` names it in the message), with a value its annotation allows."""
    parameters = keyword_parameters(found)
    for key in node:
        if key.startswith("_") or key in ours:
            continue
        if parameters is not None and key not in parameters:
            close = difflib.get_close_matches(key, list(parameters), 1)
            raise UserError(
                f"{path}.{key} is not {what}" + (f" (did you mean {path}.{close[0]}?)" if close else "") + "; drop it"
            )
        kinds = plain_kinds((parameters or {}).get(key))
        value = node[key]
        require(
            kinds is None or any(fits(value, kind) for kind in kinds),
            f"{path}.{key} must be {describe_kinds(kinds or [])}, got {plain(value)!r}",
        )


def keyword_parameters(found: Any) -> dict[str, Any] | None:
    """The keyword arguments that ``found`` (a class or a function) takes, each with its annotation
    (None where it has none that can be read), or None when it takes any keyword. A vaelab class's
    ``**kwargs`` go to its vaelab base classes, and no further: a data module passes its own on to
    InMemoryDataModule, whose ``**_`` takes and ignores the rest. Another library's ``**kwargs``
    are taken to accept anything."""
    owners = [c for c in found.__mro__ if "__init__" in vars(c)] if isinstance(found, type) else [found]
    taken: dict[str, Any] = {}
    for i, owner in enumerate(owners):
        function = vars(owner)["__init__"] if isinstance(found, type) else owner
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            return None
        annotations = annotations_of(function)
        for name, parameter in signature.parameters.items():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) and name != "self":
                taken.setdefault(name, annotations.get(name))
        if not any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
            return taken
        if not is_vaelab(owner):
            return None
        if i + 1 == len(owners) or not is_vaelab(owners[i + 1]):
            return taken
    return taken


def is_vaelab(owner: Any) -> bool:
    return str(getattr(owner, "__module__", "")).startswith("vaelab.")


def annotations_of(function: Any) -> dict[str, Any]:
    """A function's annotations as types; one that cannot be evaluated (a name imported only for
    type checkers) is left out."""
    function = inspect.unwrap(function)
    try:
        return typing.get_type_hints(function)
    except Exception:
        namespace = getattr(function, "__globals__", {})
        found = {}
        for name, annotation in getattr(function, "__annotations__", {}).items():
            try:
                found[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
            except Exception:
                continue
        return found


def plain_kinds(annotation: Any) -> list | None:
    """The kinds of plain value an annotation allows: bool, int, float, str, None and Literal
    values (as ``("literal", value)``); None when it allows anything else too (paths, lists,
    objects), which are then not checked."""
    if annotation is None or annotation is Any:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        kinds = []
        for member in typing.get_args(annotation):
            member_kinds = plain_kinds(member)
            if member_kinds is None:
                return None
            kinds += member_kinds
        return kinds
    if origin is typing.Literal:
        return [("literal", value) for value in typing.get_args(annotation)]
    if annotation in (bool, int, float, str, type(None)):
        return [annotation]
    return None


def fits(value: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return type(value) is type(kind[1]) and value == kind[1]
    return {
        bool: isinstance(value, bool),
        int: is_int(value),
        float: is_number(value),
        str: isinstance(value, str),
        type(None): value is None,
    }[kind]


def describe_kinds(kinds: list) -> str:
    words = []
    for kind in kinds:
        if kind is type(None) or (kind is int and float in kinds):
            continue
        if kind is bool:
            words += ["true", "false"]
        elif isinstance(kind, tuple):
            words.append(str(kind[1]))
        else:
            words.append({int: "a whole number", float: "a number", str: "a string"}[kind])
    if type(None) in kinds:
        words.append("null")
    return and_list(list(dict.fromkeys(words)), "or")


def and_list(words: list[str], last: str = "and") -> str:
    """a, b and c"""
    return f"{', '.join(words[:-1])} {last} {words[-1]}" if len(words) > 1 else "".join(words)


# -- what the config files give a key, and whether the user set it --------------------------------

NOT_THERE = object()  # what a config without the key holds at its place


def config_dir() -> Path:
    return Path(app.CONFIG_DIR)


@functools.cache
def option_files(group: str) -> dict[str, dict]:
    """Each option of the config group ``group`` (conf/<group>/<option>.yaml) as Hydra composes it
    on its own, unresolved: the options of its defaults list (the default option of a group nested
    in the folder, as conf/model/quantizer/), then its own keys."""
    folder = config_dir() / group
    if not folder.is_dir():
        return {}
    return {p.stem: read_option(folder, p.stem) for p in sorted(folder.glob("*.yaml")) if not p.stem.startswith("_")}


def read_option(folder: Path, name: str) -> dict:
    raw = OmegaConf.load(folder / f"{name}.yaml")
    defaults = list(raw.pop("defaults", []))
    merged = OmegaConf.create()
    for entry in defaults if "_self_" in defaults else [*defaults, "_self_"]:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, raw)
        elif isinstance(entry, str):
            merged = OmegaConf.merge(merged, read_option(folder, entry))
        else:  # a group of this folder's own (model/quantizer: vq), under its name
            for group, option in entry.items():
                if (folder / group).is_dir() and isinstance(option, str):
                    merged = OmegaConf.merge(merged, {group: read_option(folder / group, option)})
    return OmegaConf.to_container(merged, resolve=False)


@functools.cache
def train_file() -> dict:
    """conf/train.yaml's own values, with ``defaults`` as {group: the option it chooses}."""
    raw = OmegaConf.to_container(OmegaConf.load(config_dir() / "train.yaml"), resolve=False)
    choices = {}
    for entry in raw.pop("defaults", []):
        if isinstance(entry, dict):
            choices.update({group: option for group, option in entry.items() if isinstance(option, str)})
    return {**raw, "defaults": choices}


def dig(tree: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return NOT_THERE
        tree = tree[part]
    return tree


def written(cfg: DictConfig, path: str) -> Any:
    """The value at ``path`` as the config writes it: an interpolation as its text, a node as plain
    dicts and lists; ``NOT_THERE`` where the config has no such key."""
    parent, _, key = path.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_dict(node) or key not in node:
        return NOT_THERE
    return OmegaConf.to_container(node, resolve=False)[key]


def file_values(path: str, like: dict[str, Any]) -> list:
    """The values that the config files give ``path``: each option of its group whose keys in
    ``like`` have the values given there (every option when none has), or train.yaml's for a
    key of no group."""
    group, _, key = path.partition(".")
    options = list(option_files(group).values())
    if not options:
        return [dig(train_file(), path)]
    alike = [o for o in options if all(dig(o, k) == v for k, v in like.items())]
    return [dig(o, key) for o in alike or options]


def typed_keys() -> list[str]:
    """The keys the run's command line sets: ``+model.foo=1`` sets model.foo, ``model=iwae`` the
    group model (a deletion, ``~key``, sets nothing). None outside a Hydra app."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = app.command_line_overrides()
    if not overrides:
        return []
    return [o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if not o.is_delete()]


def typed(path: str) -> bool:
    """Whether the command line sets ``path``, itself or within a value for a node above it
    (``model.quantizer={...}``). Choosing a group's option (``model=beta_vae``) does not count as
    setting each of its keys."""
    return any(key == path or ("." in key and path.startswith(key + ".")) for key in typed_keys())


def set_by_user(cfg: DictConfig, path: str, like: tuple[str, ...] = ()) -> bool:
    """Whether the run's value at ``path`` is the user's: given on the command line, or one that no
    config file of its group gives it (an experiment's, or an override of a config composed
    outside a Hydra app). ``like``: the group's keys whose values pick the files to compare with
    (``_target_``: the options of the same class)."""
    value = written(cfg, path)
    if value is NOT_THERE:
        return False
    group = path.partition(".")[0]
    return typed(path) or value not in file_values(path, {k: written(cfg, f"{group}.{k}") for k in like})


def group_changed(cfg: DictConfig, group: str) -> bool:
    """Whether the run's ``group`` differs from the option that train.yaml chooses for it."""
    default = option_files(group).get(train_file()["defaults"].get(group))
    return default is not None and written(cfg, group) != default


def option_name(cfg: DictConfig, group: str) -> str | None:
    """The option of ``group`` that the run has: Hydra's choice in a Hydra app, else the option file
    it equals, else the one of the same class (``_target_``), schedule (``name``) or kind that
    shares the most values with it."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        choice = HydraConfig.get().runtime.choices.get(group)
        if choice:
            return choice
    value, options = written(cfg, group), option_files(group)
    if not isinstance(value, dict):
        return None
    for name, option in options.items():
        if option == value:
            return name
    for key in ("_target_", "name", "kind"):
        if key in value:
            alike = [name for name, option in options.items() if option.get(key) == value[key]]
            if alike:
                return max(alike, key=lambda name: sum(options[name].get(k) == v for k, v in value.items()))
    return None


REFERENCE = re.compile(r"\$\{([\w.]+)\}")


def references(tree: Any) -> set[str]:
    """The config paths that the strings in ``tree`` interpolate (``${size.latent_dim}``)."""
    if isinstance(tree, dict):
        return set().union(*map(references, tree.values()))
    if isinstance(tree, list):
        return set().union(*map(references, tree))
    return set(REFERENCE.findall(tree)) if isinstance(tree, str) else set()
