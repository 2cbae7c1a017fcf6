"""What a Hydra run of vaelab keeps of its console: conf/hydra/default.yaml sends every log
message to the console and to ``<run folder>/<task_name>.log``; this callback adds the warnings."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from hydra.experimental.callback import Callback

if TYPE_CHECKING:
    from omegaconf import DictConfig


class WarningsToLog(Callback):
    """Python's warnings become log messages (logger ``py.warnings``), so they reach the run's log
    file as well as the console. Lightning's own warnings are among them."""

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        logging.captureWarnings(True)
        logging.getLogger("py.warnings").addFilter(without_final_newline)


def without_final_newline(record: logging.LogRecord) -> bool:
    """A formatted warning ends with a newline of its own, which would leave an empty line after
    each one on the console and in the file."""
    record.args = tuple(arg.rstrip("\n") if isinstance(arg, str) else arg for arg in record.args or ())
    return True
