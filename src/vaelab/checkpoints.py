"""Checkpoints: reading them (for resuming, evaluating and the prior stage) and the checks that
keep a run from writing over another or resuming from the wrong model."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vaelab.checks import check_file, require
from vaelab.errors import UserError
from vaelab.version import __version__

if TYPE_CHECKING:
    import lightning as L

# Settings of how a model runs, not of what it is: a checkpoint resumes and loads either way.
RUN_ONLY_MODEL_KEYS = ("compile", "channels_last")


def load_checkpoint(path: str) -> dict:
    """A vaelab checkpoint as a dict; a one-line error for anything else."""
    check_file(path, "ckpt_path", "a .ckpt file from a run's checkpoints/")
    try:
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(
            f"{path} is not a readable checkpoint ({str(e).splitlines()[0][:80]}); "
            "it may be truncated: use another checkpoint (last.ckpt or best.ckpt)"
        ) from None
    except ModuleNotFoundError as e:  # a variant's hyperparameters pickled with objects of its own module
        raise UserError(
            f"{path} holds objects of module {e.name}, which cannot be imported; put the folder of that "
            "module on PYTHONPATH, as when it was trained"
        ) from None
    except Exception as e:  # unpickling arbitrary bytes raises many kinds
        raise UserError(
            f"{path} is not a PyTorch checkpoint ({e.__class__.__name__}); give a .ckpt written by train.py"
        ) from None
    require(
        isinstance(checkpoint, dict) and "vaelab" in checkpoint and "state_dict" in checkpoint,
        f"{path} is not a vaelab checkpoint (it has no vaelab run config); give a .ckpt written by train.py",
    )
    return checkpoint


def model_from_checkpoint(checkpoint: dict) -> L.LightningModule:
    """The checkpoint's model with its weights (on the CPU, in training mode)."""
    config = checkpoint["vaelab"]["config"]
    likelihood = checkpoint["hyper_parameters"].get("likelihood") or {}
    require(
        likelihood.get("name") != "gaussian" or "num_levels" in likelihood,
        "the checkpoint's Gaussian likelihood was trained on data that were not dequantized (vaelab before "
        "data.num_levels); its bits/dim would not be a bound: retrain it with this version",
    )
    target = str(config["model"]["_target_"])
    module_name, _, name = target.rpartition(".")
    try:
        python_module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
            raise  # the module is there but imports something missing: its traceback says what
        raise UserError(
            f"the checkpoint's model class {target} cannot be imported; put the folder of its module on "
            "PYTHONPATH, as when it was trained"
        ) from None
    cls = getattr(python_module, name, None)
    require(
        isinstance(cls, type),
        f"the checkpoint's model class {target} is not in {python_module.__file__}; put the folder of the module "
        "it was trained with on PYTHONPATH",
    )
    model = cls(**checkpoint["hyper_parameters"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        raise UserError(
            f"the checkpoint's weights do not fit its model ({str(e).splitlines()[0][:100]}); "
            "it was written by another version of vaelab"
        ) from None
    return model


def check_output_dir(output_dir: str, ckpt_path: str | None) -> None:
    """A new run must not write over an earlier run that used the same folder."""
    checkpoints = Path(output_dir) / "checkpoints"
    if ckpt_path is None and checkpoints.is_dir() and any(checkpoints.iterdir()):
        raise UserError(
            f"{output_dir} already holds a run's checkpoints; resume it with "
            "ckpt_path=last or choose another hydra.run.dir"
        )


def resolve_ckpt_path(ckpt_path: str | None, output_dir: str) -> str | None:
    """``last`` is the run folder's checkpoints/last.ckpt; any other value is a path."""
    if ckpt_path == "last":
        last = Path(output_dir) / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise UserError(f"ckpt_path=last but {last} does not exist; give a checkpoint path or drop ckpt_path")
        return str(last)
    return ckpt_path


# What a shipped model keeps of a checkpoint: enough for eval.py and model_from_checkpoint, nothing
# for resuming (optimizer and scheduler state, loops, callbacks, which would triple the file).
WEIGHTS_ONLY_KEYS = ("state_dict", "hyper_parameters", "vaelab", "epoch", "global_step", "pytorch-lightning_version")


def export_weights(ckpt_path: str, out_path: str) -> dict:
    """Write the weights and run config of a checkpoint (no optimizer state) to ``out_path``, for
    shipping a trained model; ``eval.py ckpt_path=<out_path>`` evaluates it. Returns what was written."""
    checkpoint = load_checkpoint(ckpt_path)
    out = Path(out_path)
    require(
        out.resolve() != Path(ckpt_path).resolve(),
        f"the weights would overwrite {ckpt_path}; give another output path",
    )
    require(not out.exists(), f"{out} exists; remove it or give another output path (nothing is overwritten)")
    weights = {key: checkpoint[key] for key in WEIGHTS_ONLY_KEYS if key in checkpoint}
    kept = {k: v for k, v in weights["vaelab"].items() if k not in ("train_epoch_sums", "group_gradients")}
    weights["vaelab"] = {**kept, "weights_only": True, "exported_from": str(ckpt_path)}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(weights, out)
    return weights


def export_main(argv: list[str] | None = None) -> None:
    """``vaelab-export-weights RUN/checkpoints/best.ckpt results/<experiment>/model.ckpt``"""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=export_weights.__doc__)
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("out", help="where to write the weights-only file")
    args = parser.parse_args(argv)
    try:
        weights = export_weights(args.checkpoint, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    size = Path(args.out).stat().st_size / 2**20
    print(f"{args.out}: weights and run config of epoch {weights.get('epoch')} ({size:.1f} MiB)")


def check_resume_checkpoint(path: str, config: dict) -> None:
    """The checkpoint must come from the same model as the one configured, with epochs left."""
    checkpoint = load_checkpoint(path)
    saved = checkpoint["vaelab"]
    require(
        not saved.get("weights_only"),
        f"{path} holds weights only (no optimizer state), for eval.py; resume from the run's own "
        "checkpoints/last.ckpt, or start a new run",
    )
    max_epochs = config["trainer"].get("max_epochs")
    if max_epochs not in (None, -1) and epochs_trained(checkpoint) >= max_epochs:
        raise UserError(
            f"{path} has trained {epochs_trained(checkpoint)} epochs and trainer.max_epochs={max_epochs}: nothing "
            "is left to train; raise trainer.max_epochs"
        )
    major = lambda version: str(version).split(".")[0]  # noqa: E731
    if major(saved.get("version")) != major(__version__):
        raise UserError(
            f"{path} was written by vaelab {saved.get('version')}, this is {__version__}; resume it with that version"
        )
    saved_config = saved.get("config") or {}
    if "seed" in saved_config and saved_config["seed"] != config.get("seed"):
        raise UserError(
            f"{path} was trained with seed={saved_config['seed']} and this run has seed={config.get('seed')}: its "
            f"data order and noise would change; resume with seed={saved_config['seed']} (or seed=null)"
        )
    ours, theirs = config["model"], saved_config.get("model", {})
    # New optimizer settings and schedules are applied on resume (GenerativeModel.apply_new_settings);
    # another optimizer class could not take the saved optimizer state.
    our_optimizer, their_optimizer = (
        (ours.get("optimizer") or {}).get("_target_"),
        (theirs.get("optimizer") or {}).get("_target_"),
    )
    their_amsgrad = (theirs.get("optimizer") or {}).get("amsgrad", False)
    if (ours.get("optimizer") or {}).get("amsgrad", False) != their_amsgrad:
        raise UserError(
            f"model.optimizer.amsgrad changes what the optimizer keeps, and {path} was trained with "
            f"amsgrad={their_amsgrad}; resume with model.optimizer.amsgrad={their_amsgrad}, or start a new run"
        )
    if their_optimizer and our_optimizer != their_optimizer:
        raise UserError(
            f"model.optimizer._target_={our_optimizer}: {path} was trained with {their_optimizer}, whose state a "
            f"resumed run continues; resume with model.optimizer._target_={their_optimizer}, or start a new run"
        )
    check_schedule_length(
        ours.get("kl_schedule") or {},
        theirs.get("kl_schedule") or {},
        max_epochs,
        (saved_config.get("trainer") or {}).get("max_epochs"),
    )
    # A setting declared after the run was written had, in that run, the behaviour of its default
    # (listed here one by one: a later setting whose default changes behaviour must not be filled in).
    settings = getattr(saved_model_class(theirs), "Settings", None)

    def saved_value(key: str) -> object:
        if key in theirs or key not in SETTINGS_ADDED_LATER or settings is None or key not in settings.model_fields:
            return theirs.get(key)
        return settings.default(key)

    differing = sorted(
        k
        for k in ours.keys() | theirs.keys()
        if k not in ("optimizer", "scheduler", *RUN_ONLY_MODEL_KEYS) and ours.get(k) != saved_value(k)
    )
    if differing:
        key = differing[0]
        raise UserError(
            f"{path} holds another model: model.{key} is {saved_value(key)!r} there and {ours.get(key)!r} "
            "here; resume with the run's own config (hydra.run.dir=<run> and the same overrides)"
        )


# Model settings declared after runs were written (the prior group, the flow posteriors, the second
# stochastic layer): a saved config without them ran as their defaults do.
SETTINGS_ADDED_LATER = ("prior", "flow_steps", "flow_hidden", "top_latents", "top_hidden")


def saved_model_class(model_config: dict) -> type | None:
    """The class a saved ``model`` config names, or None when it no longer exists."""
    module_name, _, name = str(model_config.get("_target_", "")).rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name, None) if module_name else None
    except ImportError:
        return None


def epochs_trained(checkpoint: dict) -> int:
    """Epochs whose batches were all trained: the checkpoint's epoch, plus one when it was written
    at that epoch's end."""
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current")
    return int(progress["processed"]) if progress else int(checkpoint.get("epoch", 0))


def check_schedule_length(ours: dict, theirs: dict, max_epochs: int | None, their_max_epochs: int | None) -> None:
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
