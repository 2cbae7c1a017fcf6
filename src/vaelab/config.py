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

from vaelab.checkpoints import load_checkpoint, resolve_ckpt_path
from vaelab.checks import (
    check_callbacks,
    check_ckpt_path,
    check_data,
    check_extras,
    check_loggers,
    check_optimizer,
    check_scheduler,
    check_seed,
    check_trainer,
    flag,
    require,
)
from vaelab.errors import UserError
from vaelab.models.base import GenerativeModel
from vaelab.models.prior import load_vqvae


def find_config_dir() -> str:
    """The folder of vaelab's Hydra configs: the conf/ of the source tree this code runs from (a
    checkout or an editable install), else the copy an installed package carries as vaelab.conf.
    The source tree comes first so that a checkout run with PYTHONPATH=src reads its own configs,
    not those of another checkout that is installed (editable) in the same environment."""
    tree = Path(__file__).resolve().parents[2] / "conf"
    if (tree / "train.yaml").is_file():
        return str(tree)
    return str(importlib.resources.files("vaelab.conf"))


CONFIG_DIR = find_config_dir()


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

    overrides = OverridesParser.create().parse_overrides(command_line_overrides())
    return [
        (o.key_or_group.removeprefix("data").removeprefix("."), o.input_line)
        for o in overrides
        if o.key_or_group == "data" or o.key_or_group.startswith("data.")
    ]


def command_line_overrides() -> list[str]:
    """The overrides the run was started with, as typed (none outside a Hydra app)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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


def check_model(cfg: DictConfig) -> None:
    """The settings every model has, then the model's own (its class's ``check_config``)."""
    model = cfg.model
    check_optimizer(model.optimizer)
    check_scheduler(model.get("scheduler"))
    for key in ("compile", "channels_last"):
        if key in model:
            flag(model[key], f"model.{key}")
    model_class(model.get("_target_")).check_config(model, cfg)


def check_config(cfg: DictConfig) -> None:
    """Every check of a training config; raises the first ``UserError`` found."""
    check_seed(cfg.seed)
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
    check_data(cfg.data)
    check_model(cfg)
    check_trainer(cfg.trainer, cfg.model)
    check_callbacks(cfg.get("callbacks"))
    check_loggers(cfg.get("logger"))
    check_ckpt_path(cfg.get("ckpt_path"))
