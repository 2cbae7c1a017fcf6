"""The objects a run is made of, built from its config: data module and model, loggers (W&B
named, grouped and offline without a key; a resumed run's CSV continued) and callbacks, and the
Lightning trainer that drives them."""

from __future__ import annotations

import csv
import os
import platform
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import hydra
import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from omegaconf import DictConfig, OmegaConf, open_dict

from vaelab.checkpoints import RUN_ONLY_MODEL_KEYS
from vaelab.reliability import AtomicCheckpointIO, PreemptionCheckpoint, RandomStreams
from vaelab.sweeps import in_multirun

if TYPE_CHECKING:
    from vaelab.models.base import GenerativeModel


def instantiate_plain(node: DictConfig, exclude: tuple[str, ...] = (), **extra) -> Any:
    """Build ``node._target_`` from the resolved node as plain Python values (so a
    LightningModule's saved hyperparameters are plain too), leaving out the keys ``exclude``."""
    kwargs = OmegaConf.to_container(node, resolve=True)
    for key in exclude:
        kwargs.pop(key, None)
    target = hydra.utils.get_class(kwargs.pop("_target_"))
    return target(**kwargs, **extra)


def instantiate_model(node: DictConfig) -> GenerativeModel:
    """The model of a ``model`` config node, without its run-only settings (build_model applies those)."""
    return instantiate_plain(node, exclude=RUN_ONLY_MODEL_KEYS)


def build_model(cfg: DictConfig) -> GenerativeModel:
    """The configured model, set up for this run: memory format, compiled networks, and the
    trainer settings that its manual optimization carries out (see GenerativeModel.set_run_options)."""
    model = instantiate_model(cfg.model)
    if cfg.model.get("channels_last"):
        model.to(memory_format=torch.channels_last)
    if cfg.model.get("compile"):
        model.compile_computation()
    model.set_run_options(
        run_config=OmegaConf.to_container(cfg, resolve=True),
        nonfinite=cfg.nonfinite,
        gradient_clip_val=cfg.trainer.get("gradient_clip_val"),
        gradient_clip_algorithm=cfg.trainer.get("gradient_clip_algorithm") or "norm",
        accumulate_grad_batches=cfg.trainer.get("accumulate_grad_batches") or 1,
        channels_last=bool(cfg.model.get("channels_last")),
    )
    return model


def cpu_has_bf16_matrix_units() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (Intel AMX or AVX512-BF16, as
    Linux lists them in /proc/cpuinfo); without them PyTorch converts and computes in float32."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # other CPUs name their bf16 support otherwise: unknown, so no warning
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # not Linux: unknown, so no warning
    return "amx_bf16" in flags or "avx512_bf16" in flags


def warn_if_bf16_is_slow_here(trainer_cfg: DictConfig) -> None:
    """One line when bf16 precision would run on a CPU that has no bf16 units, where it is several
    times slower than float32 (docs/scaling.md)."""
    on_cpu = trainer_cfg.get("accelerator") == "cpu" or not torch.cuda.is_available()
    if str(trainer_cfg.get("precision")).startswith("bf16") and on_cpu and not cpu_has_bf16_matrix_units():
        rank_zero_warn(
            f"trainer.precision={trainer_cfg.precision} on a CPU without bf16 units (no AMX, no AVX512-BF16) "
            "runs several times slower than trainer.precision=32-true; use it on GPUs or AMX CPUs",
            category=UserWarning,
        )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    """Lightning's trainer with the run's loggers and callbacks. The models optimise manually, so
    clipping and accumulation are theirs to do (Lightning refuses those settings then)."""
    warn_if_bf16_is_slow_here(cfg.trainer)
    callbacks = [
        RandomStreams(cfg.seed),
        *build_callbacks(cfg),
        PreemptionCheckpoint(str(Path(cfg.paths.output_dir) / "checkpoints")),
    ]
    return hydra.utils.instantiate(
        cfg.trainer,
        logger=build_loggers(cfg) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        gradient_clip_val=None,
        gradient_clip_algorithm=None,
        accumulate_grad_batches=1,
        _convert_="all",
    )


def build_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """One callback per entry of ``callbacks`` (conf/callbacks/*.yaml), less those switched off."""
    nodes = [node for node in (cfg.get("callbacks") or {}).values() if node is not None]  # callbacks.<name>=null: off
    callbacks = [hydra.utils.instantiate(node, _convert_="all") for node in nodes]
    # A callback switched off by its settings is left out: Lightning calls every hook of every
    # callback at every step (docs/measurements.md gives the cost).
    callbacks = [c for c in callbacks if getattr(c, "active", True)]
    # Lightning refuses these callbacks when their trainer switch is off, or fails without a
    # scheduler to follow or a logger to write to.
    if cfg.trainer.get("enable_progress_bar") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if cfg.trainer.get("enable_model_summary") is False:
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    if not (cfg.model.get("scheduler") and cfg.get("logger")):
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    loggers = []
    for name, node in (cfg.get("logger") or {}).items():
        node = node.copy()
        if name == "wandb":
            with open_dict(node):
                configure_wandb(node, cfg)
        if name == "mlflow":
            with open_dict(node):
                configure_mlflow(node, cfg)
        logger = hydra.utils.instantiate(node, _convert_="all")
        if name == "mlflow" and rank_zero_only.rank == 0:
            Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
            (Path(cfg.paths.output_dir) / MLFLOW_RUN_ID).write_text(logger.run_id + "\n")
        if isinstance(logger, CSVLogger) and cfg.get("ckpt_path"):
            continue_csv_log(logger)
        loggers.append(logger)
    return loggers


MLFLOW_RUN_ID = "mlflow_run_id"  # in the run folder: a resumed run continues its MLflow run


def configure_mlflow(node: DictConfig, cfg: DictConfig) -> None:
    """A resumed run logs into the MLflow run it started (its id is kept in the run folder). A
    store that is a path: MLflow 3 keeps its file store for existing users only, behind a flag;
    the store in the run folder is what needs no server and no database."""
    uri = str(node.get("tracking_uri") or "")
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    kept = Path(cfg.paths.output_dir) / MLFLOW_RUN_ID
    if cfg.get("ckpt_path") and kept.is_file() and node.get("run_id") is None:
        node.run_id = kept.read_text().strip()


def wandb_has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


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


def log_run_config(trainer: L.Trainer, run_config: dict, overrides: list[str]) -> None:
    """Every logger records the whole resolved run, not only the model's arguments, and the
    command-line overrides it was started with."""
    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger) and run_config.get("ckpt_path"):
            # MLflow's parameters cannot change: a resumed run keeps those it started with, and
            # the resume's command line goes into a tag.
            given = " ".join(overrides) or f"ckpt_path={run_config['ckpt_path']}"
            logger.experiment.set_tag(logger.run_id, "resumed_with", given[:5000])
            continue
        logger.log_hyperparams({**run_config, "overrides": overrides})


def finish_wandb(trainer: L.Trainer) -> None:
    """Ends the run's W&B run, so that everything is written (an offline run's file too) before
    train() returns, and the next job of a sweep in this process starts a run of its own."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and trainer.is_global_zero:
            logger.experiment.finish()
            # finish() returns before W&B's service has closed the run's file; teardown waits
            # for it (the next run of a sweep starts a new service).
            import wandb

            try:
                wandb.teardown()
            except SystemExit as exit_:  # W&B's service failed (an upload): the run itself is done
                rank_zero_warn(
                    f"wandb: its service ended with status {exit_.code}; the run's metrics are in its folder"
                )
