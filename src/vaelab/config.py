"""Compose a config outside a Hydra app (tests, benchmarks, notebooks)."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from vaelab.train import CONFIG_DIR


def compose_config(overrides: list[str], output_dir: str, config_name: str = "train") -> DictConfig:
    """The config `python train.py *overrides` would get, writing its run to ``output_dir``."""
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=overrides)
    cfg.paths.output_dir = str(output_dir)
    return cfg
