"""What a run needs to live inside a Hydra multirun sweep: DDP processes that re-run the job, not
the sweep; each job's distributed state and environment ended with it; and a failed job recorded
in its folder (so the sweep's report shows it) without ending the others, and removed when the
job is run again to its end."""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, open_dict, read_write

from vaelab.errors import UserError
from vaelab.reliability import TrainingStopped


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


class SweepJob:
    """The part of a run that differs inside a sweep, from its start (``begin``) to its end
    (``end``); outside a sweep, only the clearing of an earlier attempt's ``FAILED`` (see ``end``).

    Lightning's DDP starts the other processes by re-running this script with its command line
    and hydra.run.dir. Inside a sweep that command line is the whole sweep (-m and every value)
    and run.dir is not the job's folder: they would re-run the sweep. So each job hands Lightning
    its own overrides and its own folder. And since a sweep runs its jobs one after another in
    this process, each job's DDP group and the environment variables Lightning set for it
    (MASTER_PORT, LOCAL_RANK, ...) must end with the job, or the next job would wait for
    processes of the previous one that have exited."""

    def __init__(self) -> None:
        self.environment: dict[str, str] | None = None
        self.output_dir: Path | None = None

    def begin(self, cfg: DictConfig) -> None:
        self.output_dir = Path(cfg.paths.output_dir)
        if not in_multirun():
            return
        from hydra.core.hydra_config import HydraConfig

        self.environment = dict(os.environ)
        hydra_cfg = HydraConfig.get()
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg), open_dict(hydra_cfg):
            hydra_cfg.run.dir = cfg.paths.output_dir

    def end(self, failed: bool = False) -> None:
        """``failed``: the job ends by an error (``handle_failure`` records it). Otherwise the run
        has finished, and a ``FAILED`` left in its folder by an earlier attempt (a stopped job
        resumed, a crashed one run again) is removed: the report would show the completed run
        as failed. Outside a sweep only this."""
        import torch.distributed as dist

        if not failed and self.output_dir is not None:
            clear_failure(self.output_dir)
        self.output_dir = None
        if self.environment is None:
            return
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(self.environment)
        self.environment = None


def handle_failure(error: Exception, output_dir: str, job: SweepJob) -> float:
    """A user's mistake or a stop prints its one line and exits (2 or 3); a crash shows its
    traceback. In a sweep, one job's failure must not end the others: it is recorded as
    ``FAILED`` in the job's folder (and so in the sweep's report). Hydra's basic sweeper ends the
    sweep on a raised failure, so there the job returns NaN; an optimising sweeper (Optuna)
    records a raised failure as a failed trial and goes on while failures stay under its
    max_failure_rate, so there it is raised."""
    if isinstance(error, (UserError, TrainingStopped)):
        kind = "error" if isinstance(error, UserError) else "stopped"
        message = f"{kind}: {error}"
        # One line on stderr, as a print would be, and under Hydra in the run's train.log too.
        logging.getLogger(__name__).error(message)
        if not in_multirun():
            sys.exit(2 if kind == "error" else 3)
    else:  # a crash: out of memory, a bug
        if not in_multirun():
            raise error  # a single run shows its traceback and exits non-zero
        traceback.print_exc()
        message = crash_message(error)
    job.end(failed=True)
    record_failure(Path(output_dir), message)
    from hydra.core.hydra_config import HydraConfig

    if "BasicSweeper" in HydraConfig.get().sweeper._target_:
        return float("nan")
    raise error


def crash_message(error: Exception) -> str:
    """``crashed: RuntimeError: <the first line of its message>``."""
    lines = str(error).strip().splitlines()
    return f"crashed: {error.__class__.__name__}" + (f": {lines[0]}" if lines else "")


@rank_zero_only
def record_failure(folder: Path, message: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "FAILED").write_text(message + "\n")


@rank_zero_only
def clear_failure(folder: Path) -> None:
    (folder / "FAILED").unlink(missing_ok=True)
