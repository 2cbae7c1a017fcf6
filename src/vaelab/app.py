"""Where vaelab's Hydra configs are, and what the running Hydra app's command line said: the two
facts about the app that the config checks and the config code both need."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


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


# The overrides of a run started from Python (vaelab.train), where no Hydra app records them.
given_overrides: list[str] = []


def command_line_overrides() -> list[str]:
    """The overrides the run was started with, as typed: the Hydra app's, or those given to
    ``vaelab.train``."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else list(given_overrides)


def search_path_overrides() -> list[str]:
    """The ``hydra.searchpath=...`` override the Hydra app was started with (a config folder of the
    user's own), which a command that runs the same config again needs too."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.hydra if o.startswith("hydra.searchpath=")]
