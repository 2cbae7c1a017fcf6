"""Training entry point: ``python train.py [overrides]`` or the ``vaelab-train`` command.

``train(cfg)`` is a plain function that returns the final metrics, so tests and notebooks can
call it with a config composed by ``vaelab.config.compose_config``. It reads as the story of a
run: settle the config, check it, build the data, model and trainer, fit, test the best
checkpoint. How each object is built is in ``building``, checkpoints and resume checks in
``checkpoints``, what changes inside a sweep in ``sweeps``."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig

from vaelab import app
from vaelab.building import build_model, build_trainer, finish_wandb, instantiate_plain, log_run_config
from vaelab.checkpoints import check_output_dir, check_resume_checkpoint, resolve_ckpt_path
from vaelab.config import (
    CONFIG_DIR,
    check_config,
    choose_seed,
    model_class,
    print_config_tree,
    save_config,
    use_the_models_data,
)
from vaelab.errors import UserError
from vaelab.sweeps import SweepJob, handle_failure

# The job of a sweep this process is running (one at a time); outside a sweep it does nothing.
SWEEP_JOB = SweepJob()


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and test) the configured model; returns the last logged value of every metric."""
    skip_nvml_checks_without_gpus()
    # A 1-channel first convolution gets its weight gradient in an equivalent but differently
    # strided layout, so DDP copies those few values each step instead of sharing memory.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    SWEEP_JOB.begin(cfg)

    # The config, settled and checked before anything is built or written.
    choose_seed(cfg)
    use_the_models_data(cfg)  # the prior stage trains on its VQ-VAE's data set
    check_config(cfg)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg.paths.output_dir)
    check_output_dir(cfg.paths.output_dir, ckpt_path)
    if (cfg.get("extras") or {}).get("print_config"):
        print_config_tree(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = instantiate_plain(cfg.data)
    datamodule.prepare()  # a missing or corrupt data set fails here, before the model is built
    model_class(cfg.model._target_).settle_with_data(cfg.model, datamodule)
    model = build_model(cfg)
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, model.run_config)
    trainer = build_trainer(cfg)
    save_config(cfg)
    log_run_config(trainer, model.run_config, app.command_line_overrides())

    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    if cfg.get("test") and not trainer.fast_dev_run:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        test_results = trainer.test(model, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        test_metrics = {k: float(v) for k, v in test_results[0].items()}
        metrics.update(test_metrics)
        write_json(Path(cfg.paths.output_dir) / "test_metrics.json", {**test_metrics, "ckpt_path": best})
    finish_wandb(trainer)
    SWEEP_JOB.end()
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Returns ``cfg.optimized_metric`` for hyperparameter sweepers (NaN for a failed job)."""
    try:
        metrics = train(cfg)
    except Exception as error:
        return handle_failure(error, cfg.paths.output_dir, SWEEP_JOB)
    shown = {k: round(v, 4) for k, v in sorted(metrics.items()) if k.startswith("test/")}
    rank_zero_info(f"run folder: {cfg.paths.output_dir}\nseed: {cfg.seed}\ntest metrics: {shown}")
    metric = cfg.get("optimized_metric")
    if metric:
        if metric not in metrics:
            raise UserError(f"optimized_metric={metric} was not logged; choose one of {sorted(metrics)}")
        return metrics[metric]
    return None


def skip_nvml_checks_without_gpus() -> None:
    """Importing Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that asking whether CUDA
    exists cannot spoil a later fork. With it, every ``torch.cuda.is_available()`` call loads NVML
    again (nothing is cached until CUDA starts), and Adam asks once per step, a cost a small model
    feels (docs/measurements.md). With no GPU there is nothing a fork could spoil, so the plain
    check is used."""
    if not torch.cuda.is_available():
        os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


@rank_zero_only
def write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
