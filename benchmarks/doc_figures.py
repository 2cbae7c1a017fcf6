"""Every figure README.md and docs/measurements.md give from a deterministic command, measured
again with the code of this tree and compared with the number written in the docs.

Each figure names the documented command that produces it (train.py, eval.py or a benchmarks
script, with its run folder moved into a work folder), where its value is read from
(test_metrics.json, eval's metrics.json, a sweep's job folders or the script's output) and
every place in the docs that states it. The documented value is read from the docs themselves, so
a figure left behind by a change of the code shows up as STALE, and one written differently in
two places as DOCS DISAGREE. Wall times and speed ratios depend on the machine and its load; they
are not figures here.

Seeded runs give the same digits on one machine every time, but other CPUs (and other torch
builds) round some kernels differently and training carries the difference on, so a figure
agrees when it is within its rounding (half a unit of the last digit written) and a small slack
of its own: a few hundredths of a nat after a training run, 2% for the gradient variances. The
docs name the machine their figures were taken on. The runs use one CPU thread (``--threads``):
the MLPs give the same digits with one thread as with two, but the VQ-VAE's convolutions do
not, and one thread is the count every machine can match.

    .venv/bin/python benchmarks/doc_figures.py --list             # figures, commands, minutes
    .venv/bin/python benchmarks/doc_figures.py --quick            # those whose runs take a minute or less
    .venv/bin/python benchmarks/doc_figures.py --only bpd_digits --only estimator_variance
    .venv/bin/python benchmarks/doc_figures.py --workdir /tmp/figs   # keep the runs; reuse finished ones

``--only`` takes a run's name (all its figures) or a figure's. Runs another one depends on (the
training behind an eval.py) are run too. Without ``--workdir`` the runs go to a temporary folder
that is deleted at the end. Exit status 1 when a figure is stale, its docs disagree or its run
failed; figures whose data is not on this machine (Fashion-MNIST) are listed as skipped. A value
inside the slack that does not round to the written digits passes, marked "within slack": on the
docs' machine it means the docs should be updated.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = "../shared/data/binarized_mnist.npz"  # relative to ROOT, as the docs write it
FASHION = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
README = "README.md"
MEASUREMENTS = "docs/measurements.md"

# A number as the docs write it: a Unicode or ASCII minus, digits, a decimal part, an exponent.
MINUS = "\N{MINUS SIGN}"
NUMBER = rf"([{MINUS}-]?\d+(?:\.\d+)?(?:e[{MINUS}+-]?\d+)?)"
OTHER = NUMBER.replace("(", "(?:", 1)  # another number in a figure's context, not captured


def parse_number(text: str) -> float:
    return float(text.replace(MINUS, "-"))


@dataclass
class Run:
    """One documented command, as typed after ``python`` in the repository root; ``{out}`` is
    this run's folder and ``{run:NAME}`` another run's. ``reads`` says where its values come from:
    ``test_metrics.json`` (train.py), ``metrics.json`` (eval.py), ``sweep`` (a multirun's job
    folders, each job's test_metrics.json under ``<override>=<value>/``) or ``stdout`` (a
    benchmark's printed output, parsed by ``parse``)."""

    name: str
    line: str
    reads: str
    minutes: float  # undisturbed on the docs' 2-core CPU, to choose what to run
    needs: list[str] = field(default_factory=list)
    requires: str | None = None  # a path that must exist (data that is not in the repository)
    parse: Callable[[str], dict[str, float]] | None = None
    sweep_key: str | None = None

    def command(self, folders: dict[str, Path]) -> list[str]:
        def fill(arg: str) -> str:
            arg = arg.replace("{out}", str(folders[self.name]))
            return re.sub(r"\{run:(\w+)\}", lambda m: str(folders[m.group(1)]), arg)

        return [sys.executable, *(fill(a) for a in shlex.split(self.line))]

    def shown(self) -> str:
        """The command as the docs write it, without the run folder."""
        shown = " ".join(a for a in shlex.split(self.line) if "{out}" not in a)
        return re.sub(r"\{run:(\w+)\}", r"<\1 run folder>", shown)

    def output(self, folder: Path) -> Path:
        """The file whose presence says the run finished."""
        return folder / {"test_metrics.json": "test_metrics.json", "metrics.json": "metrics.json"}.get(
            self.reads, "output.txt"
        )

    def values(self, folder: Path) -> dict[str, float]:
        if self.reads in ("test_metrics.json", "metrics.json"):
            return numbers(json.loads(self.output(folder).read_text()))
        if self.reads == "stdout":
            return self.parse(self.output(folder).read_text())
        found = {}
        for metrics in sorted(folder.glob("*/test_metrics.json")):
            overrides = (metrics.parent / ".hydra" / "overrides.yaml").read_text()
            value = re.search(rf"{re.escape(self.sweep_key)}=(\S+)", overrides).group(1)
            found |= {f"{self.sweep_key}={value}/{k}": v for k, v in numbers(json.loads(metrics.read_text())).items()}
        return found


def numbers(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def parse_estimator_variance(text: str) -> dict[str, float]:
    """The rows of benchmarks/estimator_variance.py's table and its variance ratio."""
    rows = {
        "reparameterization": "reparam",
        "score function, no baseline": "sf",
        "score function, baseline": "sf_baseline",
    }
    found = {}
    for line in text.splitlines():
        # The last label holds "p(x|z)", so the cells are taken from the right.
        row = re.match(r"\| (.+) \| (\S+) \| (\S+) \| (\S+) \|$", line.strip())
        prefix = next((key for label, key in rows.items() if row and row.group(1).startswith(label)), None)
        if prefix:
            for name, cell in zip(("variance", "mean_sq", "snr"), row.groups()[1:]):
                found[f"{prefix}/{name}"] = float(cell)
        ratio = re.match(r"variance ratio .*: (\S+)$", line.strip())
        if ratio:
            found["ratio"] = float(ratio.group(1))
    return found


def parse_throughput(text: str) -> dict[str, float]:
    """The test ELBO of each loop in benchmarks/throughput.py's table (its last column)."""
    found = {}
    for line in text.splitlines():
        match = re.match(r"(vaelab|plain\+fused|plain)\s+\d+\s+\(\d+, \d+\)\s+(\S+)$", line.strip())
        if match:
            found[f"{match.group(1)}/test_elbo"] = float(match.group(2))
    return found


VQVAE = (
    f"train.py model=vqvae size=small data=fashion_mnist data.root={FASHION} likelihood=gaussian "
    "data.batch_size=128 model.optimizer.lr=1e-3 trainer.max_epochs=10"
)
MNIST5 = f"data=binarized_mnist data.path={MNIST} trainer.max_epochs=5"
RUNS = [
    Run(
        "estimator_variance",
        "benchmarks/estimator_variance.py --epochs 10 --draws 200",
        "stdout",
        0.3,
        parse=parse_estimator_variance,
    ),
    Run(
        "bpd_digits",
        "train.py likelihood=gaussian_learned likelihood.learn_sigma=pixel trainer.max_epochs=30 hydra.run.dir={out}",
        "test_metrics.json",
        0.3,
    ),
    Run(
        "beta_sweep", "train.py -m experiment=beta_vae_sweep hydra.sweep.dir={out}", "sweep", 1, sweep_key="model.beta"
    ),
    Run("vae_mnist5", f"train.py {MNIST5} hydra.run.dir={{out}}", "test_metrics.json", 0.5),
    Run(
        "vae_mnist5_k50", f"train.py model=vae {MNIST5} model.test_k=50 hydra.run.dir={{out}}", "test_metrics.json", 0.7
    ),
    Run("iwae_mnist5", f"train.py model=iwae model.k=5 {MNIST5} hydra.run.dir={{out}}", "test_metrics.json", 1.3),
    Run("plain_mnist5", "benchmarks/throughput.py --epochs 5 logger=none", "stdout", 2, parse=parse_throughput),
    Run(
        "eval_vae_mnist5",
        "eval.py ckpt_path={run:vae_mnist5}/checkpoints/best.ckpt hydra.run.dir={out}",
        "metrics.json",
        5.5,
        needs=["vae_mnist5"],
    ),
    Run(
        "vqvae_restart",
        f"{VQVAE} model.quantizer.restart_dead=true hydra.run.dir={{out}}",
        "test_metrics.json",
        5,
        requires=FASHION,
    ),
    Run(
        "eval_vqvae_restart",
        "eval.py ckpt_path={run:vqvae_restart}/checkpoints/best.ckpt hydra.run.dir={out}",
        "metrics.json",
        0.5,
        needs=["vqvae_restart"],
    ),
    Run(
        "vqvae_norestart",
        f"{VQVAE} model.quantizer.restart_dead=false hydra.run.dir={{out}}",
        "test_metrics.json",
        5,
        requires=FASHION,
    ),
    Run(
        "eval_vqvae_norestart",
        "eval.py ckpt_path={run:vqvae_norestart}/checkpoints/best.ckpt hydra.run.dir={out}",
        "metrics.json",
        0.5,
        needs=["vqvae_norestart"],
    ),
    Run(
        "vqvae_prior",
        "train.py model=vqvae_prior prior.vqvae_ckpt={run:vqvae_restart}/checkpoints/best.ckpt trainer.max_epochs=4 "
        "hydra.run.dir={out}",
        "test_metrics.json",
        19,
        needs=["vqvae_restart"],
    ),
    Run(
        "eval_vqvae_prior",
        "eval.py ckpt_path={run:vqvae_prior}/checkpoints/best.ckpt hydra.run.dir={out}",
        "metrics.json",
        1,
        needs=["vqvae_prior"],
    ),
]
RUN_BY_NAME = {run.name: run for run in RUNS}


@dataclass
class Place:
    """Where the docs state a figure: ``before`` and ``after`` are the exact text either side of
    the number in ``file`` (together they must occur once), or regular expressions if ``regex``."""

    file: str
    before: str
    after: str = ""
    regex: bool = False

    def pattern(self) -> str:
        if self.regex:
            return self.before + NUMBER + self.after
        return re.escape(self.before) + NUMBER + re.escape(self.after)

    def read(self, root: Path = ROOT) -> str:
        """The number as written."""
        text = (root / self.file).read_text()
        found = re.findall(self.pattern(), text)
        if len(found) != 1:
            raise LookupError(f"{self.file}: {len(found)} places match {self.before!r} NUMBER {self.after!r}")
        return found[0]


def rounding(written: str) -> float:
    """Half a unit of the last digit written: 0.005 for "-121.65", 0.5e-5 for "2.116e-05"."""
    mantissa, _, exponent = written.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 0.5 * 10.0 ** (int(exponent.replace(MINUS, "-") or 0) - decimals)


def cell(file: str, row: str, column: int) -> Place:
    """The number in the ``column``-th cell (1 is the first after the row's label) of the table row
    starting ``row``; bold or not."""
    return Place(file, re.escape(row + " |") + r" [^|\n]* \|" * (column - 1) + r" (?:\*\*)?", regex=True)


@dataclass
class Figure:
    """A documented number: ``value`` computes it from the runs' values (a dict per run name) and
    ``places`` are where the docs write it. Stale when the measured value is further from the
    documented one than its rounding (half a unit of the last digit written) plus the larger of
    ``tol`` and ``rel`` * |documented|: the slack for another machine's kernels."""

    name: str
    runs: list[str]
    value: Callable[[dict[str, dict[str, float]]], float]
    places: list[Place]
    tol: float
    rel: float = 0.0

    def documented(self, root: Path = ROOT) -> list[str]:
        """The number as written in each place."""
        return [place.read(root) for place in self.places]

    def agrees(self, measured: float, written: str, slack: bool = True) -> bool:
        """Whether ``measured`` is ``written`` within its rounding (and the slack, if ``slack``)."""
        documented = parse_number(written)
        allowed = rounding(written) + (max(self.tol, self.rel * abs(documented)) if slack else 0)
        return abs(measured - documented) <= allowed * (1 + 1e-9)


def read(run: str, key: str, scale: float = 1.0) -> Callable[[dict], float]:
    return lambda v: scale * v[run][key]


def figure(name: str, run: str, key: str, places: list[Place], tol: float, rel: float = 0.0, scale: float = 1.0):
    return Figure(name, [run], read(run, key, scale), places, tol, rel)


R, M = README, MEASUREMENTS
EV = "estimator_variance"
FIGURES = [
    # benchmarks/estimator_variance.py: variances and SNRs of one fixed batch, 200 draws each.
    *(
        figure(f"{EV}/{key}/{stat}", EV, f"{key}/{stat}", [cell(M, f"| {label}", column)], tol=0, rel=0.02)
        for key, label in (
            ("reparam", "reparameterization"),
            ("sf", "score function, no baseline"),
            ("sf_baseline", "score function, baseline = mean log p(x\\|z)"),
        )
        for column, stat in enumerate(("variance", "mean_sq", "snr"), start=1)
    ),
    Figure(
        f"{EV}/ratio",
        [EV],
        lambda v: v[EV]["ratio"],
        [Place(M, "yet it stays ", " times that of the")],
        tol=1,
        rel=0.02,
    ),
    Figure(
        f"{EV}/baseline_gain",
        [EV],
        lambda v: v[EV]["sf/variance"] / v[EV]["sf_baseline/variance"],
        [Place(M, "cuts the score-function variance ", "-fold")],
        tol=1,
        rel=0.02,
    ),
    # Bits/dim of the learned-sigma Gaussian on digits.
    figure(
        "bpd_digits/test_bpd",
        "bpd_digits",
        "test/bpd",
        [Place(R, "pixel`, 30 epochs on digits | **", "** bits/dim"), Place(M, "gives test **", " bits/dim**")],
        tol=0.01,
    ),
    # The beta-VAE sweep on digits, each job's test_metrics.json.
    *(
        figure(
            f"beta_sweep/beta={beta}/{stat}",
            "beta_sweep",
            f"model.beta={beta}/test/{stat}",
            [cell(M, f"| test {label}", column)]
            + (
                [Place(R, "test ELBO ", " (β = 1) to")]
                if (beta, stat) == (1, "elbo")
                else [Place(R, " to ", " (β = 16); KL")]
                if (beta, stat) == (16, "elbo")
                else []
            ),
            tol=0.03 if stat == "elbo" else 0,
            rel=0 if stat == "elbo" else 0.05,
        )
        for stat, label in (("elbo", "ELBO"), ("kl", "KL"))
        for column, beta in enumerate((1, 2, 4, 8, 16), start=1)
    ),
    # Binarized MNIST, 5 epochs: the VAE, the VAE with its test bound at k = 50, IWAE k = 5.
    figure(
        "vae_mnist5/test_elbo",
        "vae_mnist5",
        "test/elbo",
        [Place(R, "| test ELBO **", "** (a plain"), Place(M, "**test ELBO ", " nats** (bound below 125)")],
        tol=0.05,
    ),
    figure(
        "plain_mnist5/test_elbo",
        "plain_mnist5",
        "plain/test_elbo",
        [
            Place(R, "(a plain PyTorch loop of the same model: ", ")"),
            Place(M, "same model and schedule reaches ", "\n  (`benchmarks/throughput.py"),
        ],
        tol=0.05,
    ),
    figure("vae_mnist5_k50/test_elbo", "vae_mnist5_k50", "test/elbo", [cell(M, "| `vae`", 1)], tol=0.05),
    figure(
        "vae_mnist5_k50/test_bound_k50",
        "vae_mnist5_k50",
        "test/iwae_bound",
        [
            cell(M, "| `vae`", 2),
            Place(R, re.escape("test bound at k = 50: **") + OTHER + re.escape("** against "), r" \|", regex=True),
        ],
        tol=0.05,
    ),
    figure("iwae_mnist5/test_elbo", "iwae_mnist5", "test/elbo", [cell(M, "| `iwae`, k = 5", 1)], tol=0.05),
    figure(
        "iwae_mnist5/test_bound_k50",
        "iwae_mnist5",
        "test/iwae_bound",
        [cell(M, "| `iwae`, k = 5", 2), Place(R, "test bound at k = 50: **", "** against")],
        tol=0.05,
    ),
    Figure(
        "iwae_mnist5/bound_lead",
        ["iwae_mnist5", "vae_mnist5_k50"],
        lambda v: v["iwae_mnist5"]["test/iwae_bound"] - v["vae_mnist5_k50"]["test/iwae_bound"],
        [Place(M, "IWAE's 50-sample bound is ", " nats better")],
        tol=0.1,
    ),
    Figure(
        "iwae_mnist5/elbo_lead",
        ["iwae_mnist5", "vae_mnist5_k50"],
        lambda v: v["iwae_mnist5"]["test/elbo"] - v["vae_mnist5_k50"]["test/elbo"],
        [Place(M, "Its single-sample ELBO came\n  out ", " nats better too")],
        tol=0.1,
    ),
    # eval.py on the 5-epoch VAE: k = 5000 on the 10,000 test images.
    figure(
        "eval_vae_mnist5/nll",
        "eval_vae_mnist5",
        "nll",
        [Place(R, "test images) | **", " ± "), Place(M, "**NLL ", " ± ")],
        tol=0.03,
    ),
    figure(
        "eval_vae_mnist5/nll_stderr",
        "eval_vae_mnist5",
        "nll_stderr",
        [Place(R, " ± ", f"** nats ≤ {MINUS}ELBO"), Place(M, " ± ", " nats**\n  (")],
        tol=0.01,
    ),
    figure("eval_vae_mnist5/bpd", "eval_vae_mnist5", "bpd", [Place(M, " nats**\n  (", " bits/dim)")], tol=0.0002),
    figure(
        "eval_vae_mnist5/neg_elbo",
        "eval_vae_mnist5",
        "elbo",
        [Place(R, f"nats ≤ {MINUS}ELBO ", ";"), Place(M, f"≤ {MINUS}ELBO ", " (recon")],
        tol=0.03,
        scale=-1,
    ),
    figure("eval_vae_mnist5/recon", "eval_vae_mnist5", "recon", [Place(M, "(recon ", " + KL")], tol=0.03),
    figure("eval_vae_mnist5/kl", "eval_vae_mnist5", "kl", [Place(M, " + KL ", "), as theory")], tol=0.03),
    figure(
        "eval_vae_mnist5/active_units",
        "eval_vae_mnist5",
        "active_units",
        [Place(R, "; ", " of 50 units active |"), Place(M, "as theory says; ", " of 50 units\n  active")],
        tol=0,
    ),
    figure("eval_vae_mnist5/mse", "eval_vae_mnist5", "mse", [Place(M, "MSE ", ", PSNR")], tol=0.0002),
    figure(
        "eval_vae_mnist5/psnr", "eval_vae_mnist5", "psnr", [Place(M, ", PSNR ", " dB (mean over images),")], tol=0.02
    ),
    figure("eval_vae_mnist5/ssim", "eval_vae_mnist5", "ssim", [Place(M, "SSIM ", ".\n- VQ-VAE")], tol=0.002),
]


def vq_figures(run: str, label: str, readme: dict[str, Place]) -> list[Figure]:
    """The codebook and reconstruction figures of one VQ-VAE's eval.py, in the row ``label`` of
    the docs' table (and in the README where ``readme`` gives a place)."""
    columns = [("codes_used", 100, 0.3), ("dead_codes", 1, 2), ("perplexity", 1, 1), ("mse", 1, 0.00002)]
    columns += [("psnr", 1, 0.02), ("ssim", 1, 0.002)]
    return [
        figure(
            f"{run}/{key}",
            run,
            key,
            [cell(M, f"| {label}", column), *([readme[key]] if key in readme else [])],
            tol=tol,
            scale=scale,
        )
        for column, (key, scale, tol) in enumerate(columns, start=1)
    ]


FIGURES += [
    *vq_figures(
        "eval_vqvae_restart",
        "on",
        {
            "codes_used": Place(R, "restart_dead=true` | ", "% of codes used"),
            "perplexity": Place(R, "% of codes used, perplexity ", ", MSE"),
            "mse": Place(R, ", MSE ", " (restarts off"),
        },
    ),
    *vq_figures(
        "eval_vqvae_norestart",
        "off",
        {
            "codes_used": Place(R, "(restarts off: ", "%, "),
            "perplexity": Place(R, re.escape("(restarts off: ") + OTHER + "%, ", ", ", regex=True),
            "mse": Place(R, re.escape("(restarts off: ") + OTHER + "%, " + OTHER + ", ", r"\) \|", regex=True),
        },
    ),
    figure(
        "eval_vqvae_restart/bpd_uniform",
        "eval_vqvae_restart",
        "bpd",
        [Place(M, f"bound on {MINUS}log p(x) is ", " bits/dim.\n")],
        tol=0.003,
    ),
    figure(
        "eval_vqvae_prior/prior_nll",
        "eval_vqvae_prior",
        "prior_nll",
        [Place(M, "test codes was\n  **", " nats per image**")],
        tol=0.3,
    ),
    figure(
        "eval_vqvae_prior/bpd",
        "eval_vqvae_prior",
        "bpd",
        [Place(M, " to **", " bits/dim**: a discrete bound"), Place(R, "prior.vqvae_ckpt=...` | **", "** bits/dim")],
        tol=0.003,
    ),
]
FIGURE_BY_NAME = {f.name: f for f in FIGURES}


def selected(only: list[str], quick: bool) -> list[Figure]:
    if only:
        unknown = [n for n in only if n not in RUN_BY_NAME and n not in FIGURE_BY_NAME]
        if unknown:
            raise SystemExit(f"unknown figure or run: {', '.join(unknown)} (--list shows them)")
        return [f for f in FIGURES if f.name in only or any(r in only for r in f.runs)]
    if quick:
        return [f for f in FIGURES if all(total_minutes(r) <= 1 for r in f.runs)]
    return list(FIGURES)


def with_needs(names: list[str]) -> list[str]:
    """``names`` and the runs they need, each after what it needs, in RUNS' order."""
    wanted: set[str] = set()

    def add(name: str) -> None:
        wanted.add(name)
        for need in RUN_BY_NAME[name].needs:
            add(need)

    for name in names:
        add(name)
    return [run.name for run in RUNS if run.name in wanted]


def total_minutes(name: str) -> float:
    return sum(RUN_BY_NAME[n].minutes for n in with_needs([name]))


def execute(run: Run, folders: dict[str, Path], log: Path, threads: int = 1) -> str | None:
    """Runs ``run`` unless its output is there already; returns why it has no values, or None."""
    folder = folders[run.name]
    if run.output(folder).exists():
        print(f"{run.name}: reusing {folder}", file=sys.stderr)
        return None
    if run.requires and not (ROOT / run.requires).exists():
        return f"skipped: needs {run.requires}"
    missing = [need for need in run.needs if not RUN_BY_NAME[need].output(folders[need]).exists()]
    if missing:
        return f"not run: {', '.join(missing)} did not finish"
    print(f"{run.name}: {run.shown()}  (log: {log})", file=sys.stderr, flush=True)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    if threads:
        env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with log.open("w") as out:
        done = subprocess.run(run.command(folders), cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    if done.returncode != 0:
        return f"FAILED (exit {done.returncode}; see {log})"
    if run.reads in ("stdout", "sweep"):
        folder.mkdir(parents=True, exist_ok=True)
        run.output(folder).write_text(log.read_text())
    if not run.output(folder).exists():
        return f"FAILED (no {run.output(folder).name}; see {log})"
    return None


def measure(
    figures: list[Figure], workdir: Path, threads: int = 1
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Runs what ``figures`` need in ``workdir``; returns the values of each run, and why a run has none."""
    names = with_needs([r for f in figures for r in f.runs])
    folders = {name: workdir / name for name in RUN_BY_NAME}
    values, problems = {}, {}
    for name in names:
        run = RUN_BY_NAME[name]
        problem = execute(run, folders, workdir / f"{name}.log", threads)
        if problem is None:
            try:
                values[name] = run.values(folders[name])
            except (OSError, ValueError, AttributeError) as e:
                problem = f"FAILED (unreadable output: {e})"
        if problem is not None:
            problems[name] = problem
    return values, problems


def check(figures: list[Figure], values: dict, problems: dict) -> tuple[list[tuple[str, ...]], bool]:
    """A row per figure (name, documented, measured, difference, verdict) and whether all agree."""
    rows, ok = [], True
    for fig in figures:
        try:
            documented = fig.documented()
        except LookupError as e:
            rows.append((fig.name, "?", "", "", f"NOT IN DOCS ({e})"))
            ok = False
            continue
        shown = " / ".join(dict.fromkeys(documented))
        problem = next((problems[r] for r in fig.runs if r in problems), None)
        if problem is not None:
            rows.append((fig.name, shown, "", "", problem))
            ok = ok and problem.startswith("skipped")
            continue
        try:
            measured = fig.value(values)
        except KeyError as e:
            rows.append((fig.name, shown, "", "", f"FAILED (no value {e})"))
            ok = False
            continue
        differ = len({parse_number(d) for d in documented}) > 1
        stale = not all(fig.agrees(measured, d) for d in documented)
        exact = all(fig.agrees(measured, d, slack=False) for d in documented)
        verdict = (
            "DOCS DISAGREE" if differ else "STALE" if stale else "ok" if exact else "ok (within slack, not as written)"
        )
        ok = ok and verdict.startswith("ok")
        delta = measured - parse_number(documented[0])
        rows.append((fig.name, shown, f"{measured:.6g}", f"{delta:+.3g}" if math.isfinite(delta) else "", verdict))
    return rows, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="a run or a figure (repeatable)")
    parser.add_argument("--quick", action="store_true", help="only the figures whose runs take about a minute or less")
    parser.add_argument("--list", action="store_true", help="list the figures and the commands, run nothing")
    parser.add_argument("--workdir", type=Path, help="keep the runs here and reuse those that finished")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch's CPU threads in the runs (default 1, as the docs; 0: torch's own)",
    )
    args = parser.parse_args(argv)
    figures = selected(args.only, args.quick)
    if args.list:
        for name in with_needs([r for f in figures for r in f.runs]):
            run = RUN_BY_NAME[name]
            after = f" (after {', '.join(run.needs)})" if run.needs else ""
            print(f"{name}: python {run.shown()}{after}; about {run.minutes:g} min")
            for fig in figures:
                if name == fig.runs[0]:
                    print(f"    {fig.name}: {', '.join(dict.fromkeys(p.file for p in fig.places))}")
        return 0
    with tempfile.TemporaryDirectory(prefix="doc_figures_") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        values, problems = measure(figures, workdir, args.threads)
    rows, ok = check(figures, values, problems)
    header = ("figure", "documented", "measured", "difference", "")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[4])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
