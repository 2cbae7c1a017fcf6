"""Every command line that README.md and docs/*.md show, as a user would type it.

Each one is composed by its own entry point with ``--cfg job`` (Hydra prints the config instead of
running it: the same parsing of the command line, groups, keys and search path; a sweep's ``-m``
becomes one such command per job), in this process to keep it fast, and then checked as
``train.py`` checks a config before training (on a simulated GPU machine where the command asks
for GPUs). Commands needing what no test machine has (GPUs, a cluster, a checkpoint, data that is
not here) stop there; a few cheap ones also run, shortened by ``SHORT``, and the ``vaelab-report``
lines run on two small made-up sweeps. A documented command that cannot start fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from conftest import ROOT
from test_config import QUICK
from vaelab import eval as eval_entry
from vaelab import report
from vaelab import training as train_entry
from vaelab.config import check_config, choose_seed, compose_config
from vaelab.eval import check_eval_config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What a command line starts with: environment assignments, srun (in an sbatch script), the program.
COMMAND = re.compile(
    r"^(?:[A-Z_]+=\S+ +)*(?:srun +)?(?:python (?:train|eval)\.py|python -m vaelab\.report|"
    r"vaelab-(?:train|eval|report|export-weights))\b"
)
FENCE = re.compile(r"^( *)```(bash|sh)\n(.*?)^\1```", re.MULTILINE | re.DOTALL)
ANY_FENCE = re.compile(r"^( *)```.*?^\1```", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`([^`\n]+)`")

# Each placeholder the docs write and what stands in its place here, in this order. {tmp} is a
# folder made by the `scaffold` fixture: a run folder (run/), two small sweeps (sweep1/, sweep2/)
# and a config folder of the user's own (myconf/).
PLACEHOLDERS = {
    "outputs/train/runs/<run>": "{tmp}/run",
    "<run folder>": "{tmp}/run",
    "<run>": "{tmp}/run",
    "<the 5-epoch binarized-MNIST VAE above>": "{tmp}/run",
    "<restart-on run>": "{tmp}/run",
    "results/<experiment>": "results/reproduce_mnist_vae",
    "outputs/train/multiruns/<sweep>": "{tmp}/sweep1",
    "<sweep folder>": "{tmp}/sweep1",
    "<first multirun folder>": "{tmp}/sweep1",
    "<second>": "{tmp}/sweep2",
    "PATH...": "{tmp}/sweep1 {tmp}/sweep2",
    "/home/me/myconf": "{tmp}/myconf",
    "<p>": "gpu",  # a SLURM partition
    "$SLURM_JOB_ID": "4242",
    "ckpt_path=...": "ckpt_path={tmp}/run/checkpoints/best.ckpt",
    "data.path=...": "data.path=../shared/data/binarized_mnist.npz",
    "<table.npy>": "{tmp}/table.npy",
    "results/<name>/model.ckpt": "{tmp}/exported/model.ckpt",
    " ...": "",  # and any further overrides
}

# Documented commands that also run here, each shortened by SHORT (a sweep: its first job): cheap on
# the default data in one process, and building something the checks do not (loggers, callbacks,
# networks, a drawn seed). `python train.py` itself runs in the train.log tests below and
# `debug=fast_dev_run` in its own; DDP, compilation and other data are composed and checked only.
RUN = [
    "python train.py net=conv size=large",
    "python train.py logger=[csv,tensorboard]",
    "python train.py seed=null tags=[baseline,digits]",
    "python train.py callbacks=[default,early_stopping]",
    "python train.py -m model=beta_vae model.beta=1,2,4,8",
]
SHORT = QUICK  # the shortening every option's run in test_config takes


def documented_commands() -> list[tuple[str, str]]:
    """(file:line, command) of every command line in the fenced bash blocks of the docs, with
    backslash continuations joined and comments dropped, and of every code span in their prose that
    is a whole command (`python train.py -m experiment=beta_vae_sweep`, not a program's name alone)."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for block in FENCE.finditer(text):
            first = text.count("\n", 0, block.start(3)) + 1
            pending, start = "", first
            for i, line in enumerate(block.group(3).splitlines()):
                if not pending:
                    start = first + i
                if line.endswith("\\"):
                    pending += line[:-1] + " "
                    continue
                command = without_comment(pending + line)
                pending = ""
                if COMMAND.match(command):
                    found.append((f"{doc.name}:{start}", command))
        prose = ANY_FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
        for span in CODE_SPAN.finditer(prose):
            command = span.group(1)
            if COMMAND.match(command) and not re.fullmatch(r"(python (-m )?)?\S+", command):  # a name alone
                found.append((f"{doc.name}:{prose.count(chr(10), 0, span.start()) + 1}", command))
    first_places = {}
    for where, command in found:  # a command shown in several places is tested once, at its first
        first_places.setdefault(command, where)
    return [(where, command) for command, where in first_places.items()]


def without_comment(line: str) -> str:
    """A shell line without its comment, its words separated by single spaces (quotes kept)."""
    out, quote = "", None
    for char in line.strip():
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (not out or out[-1] == " "):
            break
        elif char.isspace():
            char = "" if out.endswith(" ") else " "
        out += char
    return out.strip()


COMMANDS = documented_commands()


def substituted(command: str, tmp: Path) -> list[str]:
    for placeholder, value in PLACEHOLDERS.items():
        command = command.replace(placeholder, value.format(tmp=tmp))
    assert not re.search(r"<[^>]*>|\.\.\.", command), f"a placeholder without a value in PLACEHOLDERS: {command}"
    return shlex.split(command)


def parsed(words: list[str]) -> tuple[dict[str, str], str, list[str]]:
    """(environment, program: train, eval or report, arguments) of a command's words."""
    env = {}
    while re.match(r"[A-Z_]+=", words[0]):
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    if words[0] == "srun":
        words.pop(0)
    if words[:2] == ["python", "-m"]:
        return env, words[2].rpartition(".")[2], words[3:]
    if words[0] == "python":
        return env, Path(words[1]).stem, words[2:]
    return env, words[0].removeprefix("vaelab-"), words[1:]


def sweep_jobs(args: list[str]) -> list[list[str]]:
    """The overrides of each job a command runs: one, or each of a sweep's (``-m``)."""
    if "-m" not in args and "--multirun" not in args:
        return [args]
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    (batch,) = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    return batch


@pytest.fixture(scope="module")
def scaffold(tmp_path_factory) -> Path:
    """What the placeholders point at: a run folder, two sweeps of two and one jobs with a
    test_metrics.json each, and a config folder of one's own with the docs' my_exp and my_data."""
    tmp = tmp_path_factory.mktemp("documented")
    # A trained run's folder (its checkpoints are what vaelab-export-weights reads).
    train_entry.train(compose_config([*SHORT, "data=synthetic", "test=false"], tmp / "run"))
    np.save(tmp / "table.npy", np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))  # data=tensors
    for sweep, betas in (("sweep1", (1, 4)), ("sweep2", (6,))):
        for job, beta in enumerate(betas):
            folder = tmp / sweep / str(job)
            (folder / ".hydra").mkdir(parents=True)
            (folder / ".hydra" / "overrides.yaml").write_text(f"- model.beta={beta}\n")
            metrics = {"test/elbo": -25.0 - beta, "test/mig": 0.05 * beta}
            (folder / "test_metrics.json").write_text(json.dumps(metrics))
    for group, text in (
        ("experiment/my_exp.yaml", "# @package _global_\ndefaults:\n  - override /data: my_data\n"),
        ("data/my_data.yaml", "defaults: [synthetic, _self_]\nnum_train: 64\n"),
    ):
        (tmp / "myconf" / group).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "myconf" / group).write_text(text)
    return tmp


def compose_as_typed(program: str, args: list[str], capsys, monkeypatch) -> DictConfig:
    """What ``python <program>.py *args --cfg job`` prints, through that program's own Hydra entry point."""
    main = {"train": train_entry.main, "eval": eval_entry.main}[program]
    monkeypatch.setattr(sys, "argv", [f"{program}.py", *args, "--cfg", "job"])
    hydra_config = HydraConfig.instance().cfg
    capsys.readouterr()
    try:
        main()
    except SystemExit:
        pytest.fail(f"{program}.py {shlex.join(args)} does not compose:\n{capsys.readouterr().err}")
    finally:
        HydraConfig.instance().cfg = hydra_config  # --cfg leaves Hydra's config set for this process
    return OmegaConf.create(capsys.readouterr().out)


def needs_gpus(command: str, cfg: DictConfig) -> bool:
    """A command for a machine with GPUs: trainer=gpu, or one for a cluster of GPU nodes."""
    return cfg.trainer.get("accelerator") in ("gpu", "cuda") or "slurm" in command or "srun " in command


def test_the_docs_show_the_commands_this_test_knows():
    shown = {command for _, command in COMMANDS}
    assert len(COMMANDS) > 40, COMMANDS  # the fenced blocks and the prose were both read
    assert not [command for command in RUN if command not in shown]  # RUN names documented commands
    for expected in ("trainer.num_nodes=2", "hydra/launcher=submitit_slurm", "srun python train.py"):
        assert any(expected in command for command in shown), expected


@pytest.mark.parametrize("where,command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_documented_command_composes_and_passes_the_checks(where, command, scaffold, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the docs' relative paths (results/, tests/example_variant) are the checkout's
    env, program, args = parsed(substituted(command, scaffold))
    for key, value in env.items():
        if key == "PYTHONPATH":
            monkeypatch.syspath_prepend(str(ROOT / value))
        monkeypatch.setenv(key, value)
    if program == "export-weights":
        from vaelab.checkpoints import export_main

        export_main(args)
        assert torch.load(args[1], weights_only=False)["vaelab"]["weights_only"], where
        return
    if program == "report":
        monkeypatch.chdir(tmp_path)  # where a report of several folders goes by default
        report.main(args)
        written = [Path(line) for line in capsys.readouterr().out.splitlines() if Path(line).is_file()]
        assert "report.md" in [path.name for path in written], where
        assert ("--against" in args) == any(path.suffix == ".png" for path in written), where
        return
    for job in sweep_jobs(args):
        cfg = compose_as_typed(program, job, capsys, monkeypatch)
        if program == "eval":
            if not OmegaConf.is_missing(cfg, "ckpt_path"):  # `python eval.py` alone, in prose, shows no path
                check_eval_config(cfg)
            continue
        if needs_gpus(command, cfg):
            monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
            monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
        cfg.paths.output_dir = str(scaffold / "out")
        if cfg.model._target_.endswith("CodePrior"):
            continue  # its checks read the VQ-VAE's checkpoint, which the docs' command names but no test has
        choose_seed(cfg)
        check_config(cfg)


@pytest.mark.parametrize("command", RUN)
def test_a_cheap_documented_command_runs(command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, _, args = parsed(shlex.split(command))
    job = sweep_jobs(args)[0]
    metrics = train_entry.train(compose_config([*job, *SHORT], tmp_path / "run"))
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    assert metrics["test/elbo"] < 0, metrics


def test_the_trainer_keys_the_docs_name_are_in_the_trainer_configs():
    """`trainer.<key>=...` as the docs write it, with no `+`: every key they name is set by a trainer
    config (or by the debug config that turns it on). docs/errors.md is left out: its rows are
    mistakes, tested by test_config.py."""
    named = set()
    for doc in DOCS:
        if doc.name != "errors.md":
            named |= set(re.findall(r"(?<![+\w.])trainer\.(\w+)", doc.read_text()))
    defined = set()
    for path in [*(ROOT / "conf" / "trainer").glob("*.yaml"), *(ROOT / "conf" / "debug").glob("*.yaml")]:
        node = OmegaConf.load(path)
        defined |= set((node.get("trainer") or {}) if path.parent.name == "debug" else node)
    assert named <= defined, sorted(named - defined)


def test_fast_dev_run_writes_what_its_config_says(tmp_path):
    """debug=fast_dev_run: one training and one validation batch, no test, no checkpoints or metrics;
    the run folder gets config.yaml, the first image grids and its one-point curves (and from Hydra,
    .hydra/ and train.log)."""
    metrics = train_entry.train(compose_config(["debug=fast_dev_run", "trainer.enable_progress_bar=false"], tmp_path))
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == [
        "config.yaml",
        "curves.csv",
        "images/curves.png",
        "images/reconstructions_epoch000.png",
        "images/samples_epoch000.png",
    ]
    assert not [name for name in metrics if name.startswith("test/")]


def test_the_error_tables_commands_reach_hydra_as_written_when_pasted_into_bash(monkeypatch):
    """docs/errors.md shows each mistake as typed at a prompt: bash must pass every override
    through unchanged (`model.scheduler={...,...}` unquoted would be brace-expanded into two)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from error_table import typed
    from test_config import BAD_VALUES, EVAL_BAD_VALUES

    rows = [overrides for overrides, _ in [*BAD_VALUES, *EVAL_BAD_VALUES]]
    pasted = [typed(row).replace("\\|", "|") for row in rows]  # a table's \| shows as | on the page
    script = "".join(f"printf '%s\\n' {words}; echo '<end>'\n" for words in pasted)
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split("<end>\n")[:-1] == ["".join(f"{o}\n" for o in row) for row in rows]


# -- what a run leaves: <run>/train.log holds the console's messages -------------------------------


def run_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


@pytest.mark.slow
def test_train_log_holds_the_console_messages_of_a_run(tmp_path):
    run = tmp_path / "run"
    result = run_train([*SHORT[:4], f"hydra.run.dir={run}"], cwd=tmp_path)  # the progress bar on, as typed
    assert result.returncode == 0, result.stderr[-2000:]
    log = (run / "train.log").read_text()
    for line in (f"run folder: {run}", "seed: 0", "test metrics: {'test/bpd': "):
        assert line in log and line in result.stderr, line
    assert "`Trainer.fit` stopped: `max_epochs=1` reached." in log  # Lightning's own messages
    assert "smaller than the logging interval Trainer(log_every_n_steps=50)" in log  # and its warnings
    assert "[INFO]" not in result.stderr  # the console shows the messages as they are
    assert "━" not in log and "Epoch 0" not in log  # the progress bar stays on the console


@pytest.mark.slow
def test_train_log_holds_the_message_of_a_mistake(tmp_path):
    run = tmp_path / "run"
    result = run_train(["data.batch_size=0", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 2
    message = "error: data.batch_size must be a whole number ≥ 1, got 0; set data.batch_size=<N>"
    assert result.stderr.strip() == message
    assert message in (run / "train.log").read_text()
