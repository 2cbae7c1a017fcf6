"""The run's config: where vaelab's YAML files are, composing a config outside a Hydra app (tests,
benchmarks, notebooks), checking it (``check_config``: the shared checks of ``vaelab.checks``, then
the model's own), what is settled before anything is built (the seed, the prior stage's data), and
the copies of it a run keeps."""

from __future__ import annotations

import importlib
import importlib.resources
import os
import re
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vaelab import app
from vaelab.app import CONFIG_DIR
from vaelab.callbacks import DisentanglementScores
from vaelab.checkpoints import load_checkpoint, resolve_ckpt_path
from vaelab.checks import (
    and_list,
    check_arguments,
    check_callbacks,
    check_ckpt_path,
    check_extras,
    check_loggers,
    check_optimizer,
    check_scheduler,
    check_seed,
    check_seeds,
    check_targets,
    check_trainer,
    flag,
    group_changed,
    locate,
    option_files,
    option_name,
    plain,
    references,
    require,
    set_by_user,
    train_file,
    written,
)
from vaelab.errors import UserError
from vaelab.models.base import GenerativeModel, LatentVariableModel
from vaelab.models.prior import load_vqvae
from vaelab.settings import validate


def _tensor_shape(path: str | None, key: str | None = None) -> list[int] | None:
    from vaelab.data.tensors import tensor_shape

    return tensor_shape(path, key)


def _tensor_levels(path: str | None, key: str | None = None) -> int | None:
    from vaelab.data.tensors import tensor_levels

    return tensor_levels(path, key)


# data=tensors reads the example shape and the number of levels from the user's file.
OmegaConf.register_new_resolver("tensor_shape", _tensor_shape, replace=True)
OmegaConf.register_new_resolver("tensor_levels", _tensor_levels, replace=True)


def compose_config(overrides: list[str], output_dir: str, config_name: str = "train") -> DictConfig:
    """The config `python train.py *overrides` would get, writing its run to ``output_dir``."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    cfg.paths.output_dir = str(output_dir)
    return cfg


def choose_seed(cfg: DictConfig) -> None:
    """``seed: null`` draws a seed, which is then written into the config (and so into the run
    folder's config.yaml and every checkpoint). A resumed run keeps the seed it started with. The
    processes Lightning starts for DDP re-run this command line, so the drawn seed is written
    into it; processes started by another launcher (torchrun, SLURM) could not agree on one."""
    if cfg.seed is not None:
        return
    if cfg.get("ckpt_path"):
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, cfg.paths.output_dir)
        cfg.seed = (load_checkpoint(ckpt_path)["vaelab"].get("config") or {}).get("seed")
    else:
        launched = int(os.environ.get("WORLD_SIZE", 1)) > 1 or int(os.environ.get("SLURM_NTASKS", 1)) > 1
        if launched or (cfg.trainer.get("num_nodes") or 1) > 1:
            raise UserError(
                "seed=null would draw a different seed in each process that torchrun, SLURM or another node "
                "started; give seed=<integer>"
            )
        cfg.seed = int.from_bytes(os.urandom(4), "little")
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():  # a command line that Lightning's DDP launcher re-runs
        sys.argv = [arg for arg in sys.argv if not arg.startswith("seed=")] + [f"seed={cfg.seed}"]


# How batches are made: the user's to choose in the prior stage. The rest of `data` is the data set.
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "on_device", "overfit_batches")


def use_the_models_data(cfg: DictConfig) -> None:
    """A model whose class names, in ``data_from``, a setting that holds another run's checkpoint
    trains on that run's data set (the VQ-VAE's prior: ``model.vqvae_ckpt``); see
    ``use_vqvae_data``."""
    if model_class(cfg.model._target_).data_from == "vqvae_ckpt":
        use_vqvae_data(cfg)


def use_vqvae_data(cfg: DictConfig) -> None:
    """The prior stage trains on the data set its VQ-VAE was trained on, with the user's loader
    settings (``LOADER_KEYS`` given on the command line) and seed; any other change to ``data`` is
    refused. (A missing path is left to check_config, which says what to give.)"""
    path = cfg.model.vqvae_ckpt
    if not (path and Path(path).is_file()):
        return
    data = OmegaConf.create(load_vqvae(path)["vaelab"]["config"]["data"])
    name = (
        data.get("name")
        or re.sub(r"(?<=[a-z])(?=[A-Z])", "_", data._target_.rsplit(".", 1)[-1].removesuffix("DataModule")).lower()
    )
    allowed = ", ".join(f"data.{key}" for key in LOADER_KEYS[:-1]) + f" and data.{LOADER_KEYS[-1]}"
    for key, given in command_line_data_keys():
        if key not in LOADER_KEYS:
            raise UserError(
                f"model=vqvae_prior trains on the data set of its VQ-VAE ({name}); drop {given} ({allowed} can be set)"
            )
        data[key] = cfg.data[key]
    data.overfit_batches = cfg.data.get("overfit_batches", 0)  # this run's debug setting, not the VQ-VAE's
    data.seed = "${seed}"  # the run's seed, as in every data config
    cfg.data = data


def command_line_data_keys() -> list[tuple[str, str]]:
    """(key, override as typed) of each ``data`` key set on the command line ("" for a choice of
    the data group itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = OverridesParser.create().parse_overrides(app.command_line_overrides())
    return [
        (o.key_or_group.removeprefix("data").removeprefix("."), o.input_line)
        for o in overrides
        if o.key_or_group == "data" or o.key_or_group.startswith("data.")
    ]


@rank_zero_only
def save_config(cfg: DictConfig) -> None:
    """The fully resolved config beside the run (Hydra's .hydra/config.yaml keeps the
    unresolved one), so the run can be read without knowing the defaults."""
    path = Path(cfg.paths.output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)


@rank_zero_only
def print_config_tree(cfg: DictConfig) -> None:
    """The composed config as a tree, one branch per top-level group (``extras.print_config=true``)."""
    from rich import print as rich_print
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        text = OmegaConf.to_yaml(value, resolve=True) if OmegaConf.is_config(value) else str(value)
        tree.add(key).add(Syntax(text.rstrip(), "yaml", theme="ansi_dark"))
    rich_print(tree)


# -- checking it, before anything is loaded or built ----------------------------------------------


def model_class(target: Any) -> type:
    """The model class ``model._target_`` names, with a one-line error for anything else."""
    module_name, _, name = str(target).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name) if module_name else None
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the module exists but imports something missing: its traceback says what
        cls = None
    except AttributeError:
        cls = None
    require(
        cls is not None,
        f"model._target_={target} cannot be imported; give module.Class of a model, "
        "with the folder of its module on PYTHONPATH",
    )
    require(
        isinstance(cls, type) and issubclass(cls, GenerativeModel),
        f"model._target_={target} is not a model: it must name a subclass of vaelab.models.base.GenerativeModel",
    )
    return cls


def check_model(cfg: DictConfig) -> type:
    """The optimizer and scheduler every model has, then the model's own settings (its class's
    ``Settings`` and ``check_config``); returns the class."""
    model = cfg.model
    check_optimizer(model.optimizer)
    check_scheduler(model.get("scheduler"))
    cls = model_class(model.get("_target_"))
    cls.check_config(model, cfg)
    return cls


def model_label(cfg: DictConfig, cls: type) -> str:
    """model=<option> for messages (the class's name for a model with no config file here)."""
    return f"model={option_name(cfg, 'model') or cls.__name__}"


def check_config(cfg: DictConfig) -> None:
    """Every check of a training config; raises the first ``UserError`` found."""
    check_seed(cfg.seed)
    check_seeds(cfg)
    check_extras(cfg)
    flag(cfg.test, "test")
    require(cfg.nonfinite in ("stop", "skip"), f"nonfinite must be stop or skip, got {cfg.nonfinite!r}")
    metric = cfg.get("optimized_metric")
    require(
        metric is None or (isinstance(metric, str) and metric.split("/")[0] in ("train", "val", "test")),
        f"optimized_metric must name a logged metric such as val/elbo, got {metric!r}; "
        "the metrics are train/<name>, val/<name> and test/<name>",
    )
    require(
        not (metric or "").startswith("test/") or cfg.test,
        f"optimized_metric={metric} is measured on the test split, which test=false skips; "
        "set test=true or optimize a val/ metric",
    )
    check_data(cfg.data, cfg)
    cls = check_model(cfg)
    check_trainer(cfg.trainer, cfg.model, cfg)
    check_callbacks(cfg.get("callbacks"))
    check_own_callbacks(cfg.get("callbacks"))
    check_loggers(cfg.get("logger"))
    check_ckpt_path(cfg.get("ckpt_path"))
    check_targets(cfg, skip=("model", "data"))  # their classes and keys: check_model, check_data_keys
    check_data_keys(cfg)
    check_settings_have_effect(cfg, cls)
    check_callbacks_apply(cfg, cls)


def check_data(data: DictConfig, cfg: DictConfig | None = None) -> None:
    """A vaelab data module's own checks (its ``check_config``: its ``Settings``, then the rules
    across settings); one of the user's own is checked against its signature (``check_data_keys``)."""
    from vaelab.data.in_memory import InMemoryDataModule

    module = locate(data._target_, "data")
    if isinstance(module, type) and issubclass(module, InMemoryDataModule):
        module.check_config(data, cfg)


def check_data_keys(cfg: DictConfig) -> None:
    """A data module of the user's own, with no ``Settings`` schema (vaelab's are checked against
    theirs in ``check_data``): every key of ``data`` is a keyword argument, of a type it takes."""
    from vaelab.data.in_memory import InMemoryDataModule

    module = locate(cfg.data._target_, "data")
    if isinstance(module, type) and issubclass(module, InMemoryDataModule):
        return
    label = option_name(cfg, "data") or cfg.data._target_
    check_arguments(cfg.data, "data", module, f"a setting of data={label}")


# -- settings that cannot change the run -----------------------------------------------------------

# The objects a run builds: what their settings interpolate is what the run reads.
BUILT = ("model", "data", "trainer", "callbacks", "logger")
# Config groups that reach the run only through interpolations (model.net: ${net}, ...), and
# groups of keys that do.
READ_AS_GROUPS = ("kl_schedule", "net", "likelihood", "size")
READ_AS_KEYS = ("size", "prior", "paths")


def read_paths(cfg: DictConfig) -> set[str]:
    """Every config path that the settings of the built objects interpolate, followed through the
    values they reach (model.net is ${net}, whose hidden_dims is ${size.hidden_dims})."""
    read, todo = set(), list(BUILT)
    while todo:
        for path in references(written(cfg, todo.pop())) - read:
            read.add(path)
            todo.append(path)
    return read


def is_read(path: str, read: set[str]) -> bool:
    return any(r == path or path.startswith(r + ".") for r in read)


def touches(path: str, paths: set[str]) -> bool:
    """Whether one of ``paths`` is ``path``, or a node above or below it."""
    return any(p == path or p.startswith(path + ".") or path.startswith(p + ".") for p in paths)


def readers(path: str) -> tuple[str, list[str]]:
    """The first of the groups model, net and data with options whose files read ``path`` (or part
    of it), and those options."""
    for group in ("model", "net", "data"):
        names = [name for name, option in option_files(group).items() if touches(path, references(option))]
        if names:
            return group, names
    return "", []


def check_settings_have_effect(cfg: DictConfig, cls: type) -> None:
    """A group chosen (or changed) or a key set that nothing the run builds reads is refused, with
    the options that do read it: kl_schedule=linear with model=vae, size.vq_hidden with model=vae,
    paths.data_dir with data=digits, prior.vqvae_ckpt with model=iwae, ..."""
    read = read_paths(cfg)
    model = model_label(cfg, cls)
    for group in READ_AS_GROUPS:
        if touches(group, read) or not group_changed(cfg, group):
            continue
        label = f"{group}={option_name(cfg, group)}" if option_name(cfg, group) else f"the {group} settings"
        kind, names = readers(group)
        use = f"{kind}={names[0]} {label}" if len(names) == 1 else f"{label} with {kind}={and_list(names, 'or')}"
        default = train_file()["defaults"][group]
        raise UserError(
            f"{label} has no effect on {model}: only {kind}={and_list(names)} read{'s' * (len(names) == 1)} "
            f"{group}; use {use}, or leave {group} at its default ({group}={default})"
        )
    for group in READ_AS_KEYS:
        node = written(cfg, group)
        for key in node if isinstance(node, dict) else ():
            path = f"{group}.{key}"
            if is_read(path, read) or not set_by_user(cfg, path):
                continue
            label = f"{path}={plain(OmegaConf.select(cfg, path))}"
            kind, names = readers(path)
            if not names:
                raise UserError(f"{label} has no effect: nothing in vaelab's configs reads {path}; drop it")
            # The run's own option of that group, when it is itself read: its net, its data.
            here = option_name(cfg, kind) if kind != "model" and touches(kind, read) else None
            where = f"{kind}={here}" if here else model
            if here in names:
                keys = [f"{kind}.{k}" for k, v in option_files(kind)[here].items() if touches(path, references(v))]
                raise UserError(
                    f"{label} has no effect on {where}: this run gives {and_list(keys)} itself, which {where} "
                    f"reads from {path} otherwise; drop {label}"
                )
            also = "one of them" if len(names) > 1 else f"{kind}={names[0]}"
            raise UserError(
                f"{label} has no effect on {where}: only {kind}={and_list(names)} read{'s' * (len(names) == 1)} "
                f"{path}; drop {label} or use {also}"
            )
    if "likelihood" in cfg.model and "likelihood" in cfg.data:
        require(
            cfg.data.likelihood == cfg.model.likelihood.name,
            f"data.likelihood={cfg.data.likelihood} but likelihood.name={cfg.model.likelihood.name}: the data "
            "must be prepared for the model's likelihood; drop data.likelihood (it follows likelihood.name)",
        )


def check_own_callbacks(callbacks: DictConfig | None) -> None:
    """vaelab's callbacks against the schemas they declare (``vaelab.callbacks``); Lightning's are
    checked in ``checks.check_callbacks``."""
    for name, node in (callbacks or {}).items():
        if node is not None and str(node.get("_target_", "")).startswith("vaelab.callbacks."):
            schema = getattr(locate(node._target_, f"callbacks.{name}"), "Settings", None)
            if schema is not None:
                validate(schema, node, f"callbacks.{name}")


def check_callbacks_apply(cfg: DictConfig, cls: type) -> None:
    """Callbacks that cannot do their work in this run, or whose settings cannot change it."""
    callbacks = cfg.get("callbacks") or {}
    trainer = cfg.trainer
    fast_dev_run = bool(trainer.get("fast_dev_run"))
    gradients = callbacks.get("encoder_gradient_variance")
    if gradients is not None and gradients.num_draws > 0:
        require(
            issubclass(cls, LatentVariableModel),
            "callbacks.encoder_gradient_variance measures the encoder gradient of a model with q(z|x), and "
            f"{model_label(cfg, cls)} has none; set callbacks.encoder_gradient_variance.num_draws=0",
        )
        require(
            not cls.conditional,
            "callbacks.encoder_gradient_variance measures unconditional encoders, and model=cvae's is given the "
            "labels; set callbacks.encoder_gradient_variance.num_draws=0",
        )
    elif gradients is not None:
        for key in gradients:
            require(
                key == "num_draws" or not set_by_user(cfg, f"callbacks.encoder_gradient_variance.{key}"),
                f"callbacks.encoder_gradient_variance.{key} has no effect while "
                "callbacks.encoder_gradient_variance.num_draws=0 (off); "
                "set callbacks.encoder_gradient_variance.num_draws=<N>",
            )
    scores = callbacks.get("disentanglement")
    if scores is not None:
        # The callback's own checks, which it makes again when the run starts (a data file can lack factors).
        DisentanglementScores.check_model(cls)
        data_class = locate(cfg.data._target_, "data")
        require(
            hasattr(data_class, "ground_truth"),
            "callbacks=[...,disentanglement] needs data with ground-truth factors (such as data=dsprites); "
            f"{data_class.__name__} has none: drop the callback",
        )
        require(
            scores.every_n_epochs or cfg.test or fast_dev_run,
            "callbacks.disentanglement scores the test split after fitting, which test=false skips; "
            "set test=true or callbacks.disentanglement.every_n_epochs=<N>",
        )
    monitor = callbacks.get("learning_rate_monitor")
    if monitor is not None and not (cfg.model.get("scheduler") and cfg.get("logger")):
        missing = (
            ("model.scheduler", "there is no schedule to follow", "set model.scheduler")
            if not cfg.model.get("scheduler")
            else ("a logger", "there is nowhere to write", "choose logger=<name>")
        )
        for key in monitor:
            require(
                key == "_target_" or not set_by_user(cfg, f"callbacks.learning_rate_monitor.{key}"),
                f"callbacks.learning_rate_monitor.{key} has no effect without {missing[0]} (the monitor is left "
                f"out when {missing[1]}); {missing[2]} or drop it",
            )
    for name, switch in (("progress_bar", "enable_progress_bar"), ("model_summary", "enable_model_summary")):
        node = callbacks.get(name)
        if node is not None and trainer.get(switch) is False:
            for key in node:
                require(
                    key == "_target_" or not set_by_user(cfg, f"callbacks.{name}.{key}"),
                    f"callbacks.{name}.{key} has no effect with trainer.{switch}=false; "
                    f"drop it or set trainer.{switch}=true",
                )
    if trainer.get("enable_checkpointing") is False:
        from lightning.pytorch.callbacks import Checkpoint

        built = {name: locate(node._target_, f"callbacks.{name}") for name, node in callbacks.items() if node}
        writers = [
            f"callbacks.{name}" for name, c in built.items() if isinstance(c, type) and issubclass(c, Checkpoint)
        ]
        require(
            not writers,
            f"trainer.enable_checkpointing=false but {and_list(writers)} write checkpoints; drop them "
            f"({' '.join('~' + w for w in writers)}) or trainer.enable_checkpointing",
        )
