"""Training entry point: ``python train.py [overrides]`` or the ``vaelab-train`` command.

``train(cfg)`` is a plain function that returns the final metrics, so tests and notebooks can
call it with a config composed by Hydra's compose API.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import os
import re
import sys
import traceback
import uuid
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import vaelab
from vaelab.checks import check_config
from vaelab.errors import UserError
from vaelab.reliability import AtomicCheckpointIO, PreemptionCheckpoint, RandomStreams, TrainingStopped


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


def instantiate_plain(node: DictConfig, exclude: tuple[str, ...] = (), **extra):
    """Build ``node._target_`` from the resolved node as plain Python values (so a
    LightningModule's saved hyperparameters are plain too), leaving out the keys ``exclude``."""
    kwargs = OmegaConf.to_container(node, resolve=True)
    for key in exclude:
        kwargs.pop(key, None)
    target = hydra.utils.get_class(kwargs.pop("_target_"))
    return target(**kwargs, **extra)


# Settings of how a model runs, not of what it is: a checkpoint resumes and loads either way.
RUN_ONLY_MODEL_KEYS = ("compile", "channels_last")


def instantiate_model(node: DictConfig):
    """The model of a ``model`` config node, without its run-only settings (train() applies those)."""
    return instantiate_plain(node, exclude=RUN_ONLY_MODEL_KEYS)


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def continue_csv_log(logger: CSVLogger) -> None:
    """A resumed run appends to the run's metrics.csv. Lightning's writer deletes an existing
    file when it starts and knows none of its columns, so the file is read first, put back, and
    its columns handed to the writer."""
    path = Path(logger.log_dir) / "metrics.csv"
    earlier = path.read_text() if path.is_file() else None
    writer = logger.experiment  # created here: this is where Lightning removes the file
    if earlier:
        path.write_text(earlier)
        header = next(csv.reader(earlier.splitlines()), [])
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(header))


def configure_wandb(node: DictConfig, cfg: DictConfig) -> None:
    """Offline without a key; one W&B run per run folder (its id is kept in the folder, so a
    resumed run continues the same W&B run); a group per sweep; a name from the overrides."""
    from hydra.core.hydra_config import HydraConfig

    if node.get("offline") == "auto":
        node.offline = os.environ.get("WANDB_MODE") == "offline" or not wandb_has_credentials()
        if node.offline:
            rank_zero_info(
                f"wandb: no API key, logging offline; later run `wandb sync {cfg.paths.output_dir}/wandb/offline-run-*`"
            )
    id_file = Path(cfg.paths.output_dir) / "wandb_run_id"
    if id_file.is_file():
        node.id = id_file.read_text().strip()
    else:
        node.id = uuid.uuid4().hex[:8]
        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(node.id + "\n")
    node.resume = "allow"
    if HydraConfig.initialized():
        job = HydraConfig.get().job
        if node.get("name") is None:
            node.name = job.override_dirname or Path(cfg.paths.output_dir).name
        if node.get("group") is None and in_multirun():
            node.group = Path(HydraConfig.get().sweep.dir).name


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        node = node.copy()
        if name == "wandb":
            with open_dict(node):
                configure_wandb(node, cfg)
        logger = hydra.utils.instantiate(node, _convert_="all")
        if isinstance(logger, CSVLogger) and cfg.get("ckpt_path"):
            continue_csv_log(logger)
        loggers.append(logger)
    return loggers


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    callbacks = [hydra.utils.instantiate(node, _convert_="all") for node in (cfg.get("callbacks") or {}).values()]
    # A callback switched off by its settings is left out: Lightning calls every hook of every
    # callback at every step, ~1% of a small model's speed per callback (measured).
    callbacks = [c for c in callbacks if getattr(c, "active", True)]
    if cfg.trainer.get("enable_progress_bar") is False:  # Lightning refuses a progress bar callback then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


def check_output_dir(cfg: DictConfig) -> None:
    """A new run must not write over an earlier run that used the same folder."""
    checkpoints = Path(cfg.paths.output_dir) / "checkpoints"
    if cfg.get("ckpt_path") is None and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise UserError(
            f"{cfg.paths.output_dir} already holds a run's checkpoints; resume it with "
            "ckpt_path=last or choose another hydra.run.dir"
        )


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(f"ckpt_path=last but {last} does not exist; give a checkpoint path or drop ckpt_path")
        return str(last)
    return ckpt


def check_resume_checkpoint(path: str, config: dict) -> None:
    """The checkpoint must come from the same model as the one configured, with epochs left."""
    from vaelab.eval import load_checkpoint

    checkpoint = load_checkpoint(path)
    saved = checkpoint["vaelab"]
    max_epochs = config["trainer"].get("max_epochs")
    if max_epochs not in (None, -1) and checkpoint.get("epoch", 0) >= max_epochs:
        raise UserError(
            f"{path} is at epoch {checkpoint['epoch']} and trainer.max_epochs={max_epochs}: nothing is "
            "left to train; raise trainer.max_epochs"
        )
    major = lambda version: str(version).split(".")[0]  # noqa: E731
    if major(saved.get("version")) != major(vaelab.__version__):
        raise UserError(
            f"{path} was written by vaelab {saved.get('version')}, this is {vaelab.__version__}; "
            "resume it with that version"
        )
    saved_config = saved.get("config") or {}
    ours, theirs = config["model"], saved_config.get("model", {})
    check_schedule_length(
        ours.get("kl_schedule") or {},
        theirs.get("kl_schedule") or {},
        max_epochs,
        (saved_config.get("trainer") or {}).get("max_epochs"),
    )
    differing = sorted(
        k
        for k in ours.keys() | theirs.keys()
        if k not in ("optimizer", "scheduler", *RUN_ONLY_MODEL_KEYS) and ours.get(k) != theirs.get(k)
    )
    if differing:
        key = differing[0]
        raise UserError(
            f"{path} holds another model: model.{key} is {theirs.get(key)!r} there and {ours.get(key)!r} "
            "here; resume with the run's own config (hydra.run.dir=<run> and the same overrides)"
        )


def check_schedule_length(ours: dict, theirs: dict, max_epochs, their_max_epochs) -> None:
    """A KL schedule whose length follows trainer.max_epochs changes when a run is extended: say
    how to keep the run's own schedule (or to start anew for a stretched one)."""
    for key in ("epochs", "total_epochs", "warmup_epochs"):
        if (
            key in ours
            and ours[key] != theirs.get(key)
            and (ours[key], theirs.get(key)) == (max_epochs, their_max_epochs)
        ):
            raise UserError(
                f"kl_schedule.{key} follows trainer.max_epochs ({their_max_epochs} in the run, {max_epochs} "
                f"now); to extend the run with the schedule it had, add kl_schedule.{key}={their_max_epochs} "
                f"(it then holds at its end value); to stretch the schedule over {max_epochs} epochs, "
                "start a new run"
            )


# How batches are made: the user's to choose in the prior stage. The rest of `data` is the data set.
LOADER_KEYS = ("batch_size", "eval_batch_size", "num_workers", "pin_memory", "on_device", "overfit_batches")


def use_vqvae_data(cfg: DictConfig) -> None:
    """The prior stage trains on the data set its VQ-VAE was trained on, with the user's loader
    settings (``LOADER_KEYS`` given on the command line) and seed; any other change to ``data`` is
    refused. (A missing path is left to check_config, which says what to give.)"""
    from vaelab.models.prior import load_vqvae

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
    data.seed = cfg.seed
    cfg.data = data


def command_line_data_keys() -> list[tuple[str, str]]:
    """(key, override as typed) of each ``data`` key set on the command line ("" for a choice of
    the data group itself)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return []
    overrides = OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task))
    return [
        (o.key_or_group.removeprefix("data").removeprefix("."), o.input_line)
        for o in overrides
        if o.key_or_group == "data" or o.key_or_group.startswith("data.")
    ]


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def prepare_ddp_relaunch(cfg: DictConfig) -> None:
    """Lightning's DDP starts the other processes by re-running this script with its command
    line and hydra.run.dir. Inside a sweep that command line is the whole sweep (-m and every
    value) and run.dir is not the job's folder: they would re-run the sweep. So each job hands
    Lightning its own overrides and its own folder."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = cfg.paths.output_dir


_ENVIRONMENT_AT_JOB_START: dict[str, str] = {}


def end_distributed() -> None:
    """A sweep runs its jobs one after another in this process: each job's DDP group, and the
    environment variables Lightning set for it (MASTER_PORT, LOCAL_RANK, ...), must end with the
    job, or the next job would wait for processes of the previous one that have exited."""
    import torch.distributed as dist

    if not in_multirun():
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if _ENVIRONMENT_AT_JOB_START:
        os.environ.clear()
        os.environ.update(_ENVIRONMENT_AT_JOB_START)


def skip_nvml_checks_without_gpus() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that asking whether CUDA
    exists cannot spoil a later fork. With it, every ``torch.cuda.is_available()`` call loads NVML
    again (nothing is cached until CUDA starts), and Adam asks once per step: on a machine with no
    GPU that cost a small MLP 12% of its training speed (measured). With no GPU there is nothing
    a fork could spoil, so the plain check is used."""
    if not torch.cuda.is_available():
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; returns the last logged value of every metric."""
    skip_nvml_checks_without_gpus()
    # A 1-channel first convolution gets its weight gradient in an equivalent but differently
    # strided layout, so DDP copies those few values each step instead of sharing memory.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    if in_multirun():
        _ENVIRONMENT_AT_JOB_START.clear()
        _ENVIRONMENT_AT_JOB_START.update(os.environ)
        prepare_ddp_relaunch(cfg)
    if cfg.model._target_.endswith("CodePrior"):
        use_vqvae_data(cfg)
    check_config(cfg)
    check_output_dir(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate_plain(cfg.data)
    datamodule.prepare()  # a missing or corrupt data set fails here, before anything is built
    compile_networks = cfg.model.get("compile", False)
    model = instantiate_model(cfg.model)
    if cfg.model.get("channels_last"):
        model.to(memory_format=torch.channels_last)
        model.channels_last = True  # its batches are converted too (GenerativeModel.images)
    if compile_networks:
        # In place: the parameter names, and so the checkpoints, stay those of the plain model.
        for network in model.networks():
            network.compile()
    model.run_config = OmegaConf.to_container(cfg, resolve=True)
    model.nonfinite = cfg.nonfinite
    # The models optimise manually, so clipping is theirs to do (Lightning refuses the setting then).
    model.gradient_clip_val = cfg.trainer.get("gradient_clip_val")
    model.gradient_clip_algorithm = cfg.trainer.get("gradient_clip_algorithm") or "norm"
    model.accumulate_grad_batches = cfg.trainer.get("accumulate_grad_batches") or 1
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, model.run_config)
    callbacks = [
        RandomStreams(cfg.seed),
        *build_callbacks(cfg),
        PreemptionCheckpoint(str(Path(cfg.paths.output_dir) / "checkpoints")),
    ]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer,
        logger=build_loggers(cfg) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
        accumulate_grad_batches=1,
        _convert_="all",
    )
    save_config(cfg)
    for logger in trainer.loggers:  # the whole resolved run, not only the model's arguments
        logger.log_hyperparams(logged_config(model.run_config))

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if cfg.get("test") and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        test_metrics = {k: float(v) for k, v in test_results[0].items()}
        metrics.update(test_metrics)
        write_json(Path(cfg.paths.output_dir) / "test_metrics.json", {**test_metrics, "ckpt_path": best})
    finish_wandb(trainer)
    end_distributed()
    return metrics


def finish_wandb(trainer: L.Trainer) -> None:
    """Ends the run's W&B run, so that everything is written (an offline run's file too) before
    train() returns, and the next job of a sweep in this process starts a run of its own."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()


def logged_config(run_config: dict) -> dict:
    """What the loggers record of a run: its resolved config, plus the command-line overrides."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {**run_config, "overrides": overrides}


@rank_zero_only
def save_config(cfg: DictConfig) -> None:
    """The fully resolved config beside the run (Hydra's .hydra/config.yaml keeps the
    unresolved one), so the run can be read without knowing the defaults."""
    path = Path(cfg.paths.output_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path, resolve=True)


@rank_zero_only
def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``cfg.optimized_metric`` for hyperparameter sweepers (NaN for a failed job)."""
    try:
        metrics = train(cfg)
    except Exception as e:
        if isinstance(e, (UserError, TrainingStopped)):
            kind = "error" if isinstance(e, UserError) else "stopped"
            message = f"{kind}: {e}"
            print(message, file=sys.stderr)
            if not in_multirun():
                sys.exit(2 if kind == "error" else 3)
        else:  # a crash: out of memory, a bug
            if not in_multirun():
                raise  # a single run shows its traceback and exits non-zero
            traceback.print_exc()
            message = crash_message(e)
        # In a sweep, one job's failure must not end the others. It is recorded in its folder (and
        # so in the sweep's summary). Hydra's basic sweeper ends the sweep on a raised failure, so
        # there the job just returns; an optimising sweeper (Optuna) records a raised failure as a
        # failed trial and goes on while the failures stay under its max_failure_rate.
        end_distributed()
        record_failure(Path(cfg.paths.output_dir), message)
        from hydra.core.hydra_config import HydraConfig

        if "BasicSweeper" in HydraConfig.get().sweeper._target_:
            return float("nan")
        raise
    shown = {k: round(v, 4) for k, v in sorted(metrics.items()) if k.startswith("test/")}
    rank_zero_info(f"run folder: {cfg.paths.output_dir}\ntest metrics: {shown}")
    metric = cfg.get("optimized_metric")
    if metric:
        if metric not in metrics:
            raise UserError(f"optimized_metric={metric} was not logged; choose one of {sorted(metrics)}")
        return metrics[metric]
    return None


def crash_message(error: Exception) -> str:
    """``crashed: RuntimeError: <the first line of its message>``."""
    lines = str(error).strip().splitlines()
    return f"crashed: {error.__class__.__name__}" + (f": {lines[0]}" if lines else "")


@rank_zero_only
def record_failure(folder: Path, message: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "FAILED").write_text(message + "\n")


if __name__ == "__main__":
    main()
