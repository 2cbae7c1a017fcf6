"""One table of many runs: ``vaelab-report PATH [PATH ...] --metric test/elbo --against model.beta``.

PATH is a multirun folder, a run folder or any folder above them. Every run found under it
(a folder with ``test_metrics.json`` from train.py or ``metrics.json`` from eval.py) becomes a row:
its command-line overrides and its final metrics. Writes ``report.md``, ``report.csv`` and, with
``--against``, a plot of the metric against that override, into ``--out``; without it, into PATH
when there is one, and into a new folder ``outputs/report/<date>_<time>/`` when there are several
(so that no sweep's own report is overwritten), with ``curves.png``: the learning curves of the runs
that kept them (``curves.csv``). With ``--against``, runs that differ in anything
but that override (their model, or any other setting) are separate series: one line each in the
plot, labelled by what differs, and a ``series`` column in the table.

Runs that differ only in ``seed`` are repetitions of one setting: when there are any, the report
also holds one row per setting with n and the mean ± standard deviation (sample, n - 1) of every
metric over its seeds (the first table of ``report.md``, and ``report_seeds.csv``), and the plot
draws each setting's mean with its standard deviation as an error bar.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn
    from omegaconf import DictConfig

METRIC_FILES = ("test_metrics.json", "metrics.json", "FAILED")

# Settings that change what a run shows, logs or where it keeps its files, not what it learns:
# runs differing only in these belong to the same series.
NEUTRAL_KEYS = (
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "callbacks.progress_bar",
    "callbacks.model_summary",
    "extras",
    "tags",
    "logger",
    "ckpt_path",
    "paths",
    "data_dir",
)
MODEL_TARGET = "model._target_"
SEED = "seed"  # runs differing only in it repeat one setting


def find_runs(paths: list[Path]) -> list[Path]:
    runs = set()
    for path in paths:
        if not path.exists():
            raise SystemExit(f"error: {path} does not exist; give a multirun or run folder")
        runs.update(p.parent for name in METRIC_FILES for p in path.rglob(name) if p.parent.name != "images")
    return sorted(runs, key=numeric_order)


def numeric_order(path: Path) -> list:
    """Sort key reading the numbers in a path as numbers: job 2 before job 10."""
    return [[int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)] for name in path.parts]


def read_run(run: Path) -> tuple[dict, dict]:
    """(overrides, scalar metrics) of one run folder."""
    overrides = {}
    overrides_file = run / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        for item in yaml.safe_load(overrides_file.read_text()) or []:
            key, _, value = item.partition("=")
            overrides[key.lstrip("+~")] = value
    metrics = {}
    if (run / "FAILED").is_file():
        metrics["status"] = "failed: " + (run / "FAILED").read_text().strip()
    for name in METRIC_FILES[:2]:
        if (run / name).is_file():
            data = json.loads((run / name).read_text())
            metrics.update({k: v for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return overrides, metrics


def read_settings(run: Path) -> tuple[dict, dict]:
    """(resolved config, config group choices) a run folder keeps: train.py's config.yaml (else
    Hydra's unresolved .hydra/config.yaml) and .hydra/hydra.yaml's choices; empty where missing."""
    config = {}
    for path in (run / "config.yaml", run / ".hydra" / "config.yaml"):
        if path.is_file():
            config = yaml.safe_load(path.read_text()) or {}
            break
    choices = {}
    hydra_file = run / ".hydra" / "hydra.yaml"
    if hydra_file.is_file():
        hydra_cfg = (yaml.safe_load(hydra_file.read_text()) or {}).get("hydra") or {}
        choices = (hydra_cfg.get("runtime") or {}).get("choices") or {}
    return config, choices


def as_number(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def is_neutral(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NEUTRAL_KEYS)


def setting(key: str, overrides: dict, config: dict, choices: dict) -> str | None:
    """A run's value of a setting: given on its command line, else in its config (a dotted key)
    or among its config group choices (``model``, ``net``, ...); None if the folder does not say."""
    if key in overrides:
        return overrides[key]
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None or isinstance(value, dict):
        value = choices.get(key)
    return None if value is None else str(value)


def comparable(value: str | None) -> float | str | None:
    """Numbers compare as numbers (``4`` and ``4.0``), words without case (``False`` and ``false``)."""
    number = as_number(value)
    return number if number is not None else None if value is None else value.strip().lower()


def series_of(runs: list[Path], overrides: list[dict], against: str) -> list[str]:
    """The series each run belongs to, as the legend labels it: the settings, other than
    ``against``, whose values are not the same in every run on the x axis (the model among them).
    When nothing else differs, one series, labelled by its model where the folders name it. A
    run without a number for ``against`` is in none ("")."""
    labels = [""] * len(runs)
    on_axis = [i for i, o in enumerate(overrides) if as_number(o.get(against)) is not None]
    runs, overrides = [runs[i] for i in on_axis], [overrides[i] for i in on_axis]
    settings = [read_settings(run) for run in runs]
    keys = sorted(
        {k for o in overrides for k in o if k not in (against, SEED) and not is_neutral(k)} | {"model", MODEL_TARGET}
    )
    values = {k: [setting(k, o, *s) for o, s in zip(overrides, settings)] for k in keys}
    differing = [k for k in keys if len({comparable(v) for v in values[k]}) > 1]
    if "model" in differing and MODEL_TARGET in differing:
        differing.remove(MODEL_TARGET)  # the model's name says it already
    if not differing:
        differing = [k for k in ("model", MODEL_TARGET) if any(v is not None for v in values[k])][:1]

    def shown(key: str, value: str | None) -> str:
        if value is None:
            return f"{key}=?"
        return f"{key}={value.rsplit('.', 1)[-1]}" if key.endswith("_target_") else f"{key}={value}"

    for j, i in enumerate(on_axis):
        labels[i] = ", ".join(shown(k, values[k][j]) for k in differing)
    return labels


def setting_key(overrides: dict) -> tuple:
    """What a run's overrides set, but for its seed and what only changes display: runs with equal
    keys repeat one setting."""
    return tuple(sorted((k, comparable(v)) for k, v in overrides.items() if k != SEED and not is_neutral(k)))


def seed_of(run: Path, overrides: dict) -> str | None:
    """The run's seed: from its command line, else its config.yaml (a run of the default seed)."""
    return setting(SEED, overrides, *read_settings(run))


def seed_groups(rows: list) -> list[list[int]]:
    """Indices of the rows of each setting, in the order settings first appear."""
    groups: dict[tuple, list[int]] = {}
    for i, (_, overrides, _) in enumerate(rows):
        groups.setdefault(setting_key(overrides), []).append(i)
    return list(groups.values())


def mean_and_sd(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1 in the denominator; None for one value).
    A NaN or infinite value (a diverged seed) makes both NaN rather than stopping the report."""
    n = len(values)
    if not all(math.isfinite(v) for v in values):
        return math.nan, math.nan if n > 1 else None
    mean = math.fsum(values) / n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None


def seeded(groups: list[list[int]], seeds: list[str | None]) -> bool:
    """Whether some setting was run with several seeds: a group of runs whose seeds all differ."""
    return any(len(g) > 1 and len({seeds[i] for i in g} - {None, "None"}) == len(g) for g in groups)


def seed_table(
    rows: list, groups: list[list[int]], seeds: list[str | None], metric_keys: list[str]
) -> tuple[list[str], list[list]]:
    """One row per setting: its overrides but the seed, the seeds, n (runs that did not fail) and,
    for each numeric metric, its mean and standard deviation over those runs."""
    keys = sorted({k for _, o, _ in rows for k in o if k != SEED})
    numeric = [k for k in metric_keys if k != "status"]
    header = [*keys, "seeds", "n", *(f"{k} {part}" for k in numeric for part in ("mean", "sd"))]
    table = []
    for group in groups:
        first = rows[group[0]][1]
        ok = [i for i in group if "status" not in rows[i][2]]
        cells = [*(first.get(k, "") for k in keys), " ".join(str(seeds[i]) for i in group), len(ok)]
        for key in numeric:
            values = [rows[i][2][key] for i in ok if isinstance(rows[i][2].get(key), (int, float))]
            mean, sd = mean_and_sd(values) if values else ("", None)
            cells += [mean, "" if sd is None else sd]
        table.append(cells)
    return header, table


def markdown(header: list[str], table: list[list]) -> list[str]:
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table]


def write_report(runs: list[Path], out: Path, metric: str | None, against: str | None) -> list[Path]:
    if against and metric is None:
        raise SystemExit("error: --against needs --metric; name the metric to plot")
    rows = [(run, *read_run(run)) for run in runs]
    series = series_of(runs, [o for _, o, _ in rows], against) if against else None
    override_keys = sorted({k for _, o, _ in rows for k in o})
    metric_keys = sorted({k for _, _, m in rows for k in m}, key=lambda k: (k != "status", k))
    header = ["run", *override_keys, *metric_keys]
    table = [
        [str(run), *(o.get(k, "") for k in override_keys), *(m.get(k, "") for k in metric_keys)] for run, o, m in rows
    ]
    if series is not None and len(set(series)) > 1:
        # Each series' runs together, along the x axis, as the plot draws them.
        order = sorted(range(len(rows)), key=lambda i: (series[i], x_key(rows[i][1].get(against))))
        header.insert(1, "series")
        table = [[table[i][0], series[i], *table[i][1:]] for i in order]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    lines = markdown(header, table)
    written = [out / "report.md", out / "report.csv"]
    groups = seed_groups(rows)
    seeds = [seed_of(run, o) for run, o, _ in rows]  # each run's config.yaml read once
    if seeded(groups, seeds):
        seed_header, seed_rows = seed_table(rows, groups, seeds, metric_keys)
        with open(out / "report_seeds.csv", "w", newline="") as f:
            csv.writer(f).writerows([seed_header, *seed_rows])
        written.append(out / "report_seeds.csv")
        lines = [
            "Mean and standard deviation (sample, n - 1) over the seeds of each setting; n counts the runs that "
            "did not fail.",
            "",
            *markdown(seed_header, seed_rows),
            "",
            "Each run:",
            "",
            *lines,
        ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    curves = plot_curves(rows, out)
    if curves is not None:
        written.append(curves)
    if against:
        written.append(plot_series(rows, series, out, metric, against, override_keys, metric_keys))
    return written


def plot_curves(rows: list, out: Path) -> Path | None:
    """The learning curves of every run that kept them (``curves.csv``) in one ``curves.png``, each
    run labelled by the overrides that tell it from the others."""
    from vaelab.curves import draw_curves, read_curves

    curves = [(o, read_curves(run / "curves.csv")) for run, o, _ in rows if (run / "curves.csv").is_file()]
    if not curves:
        return None
    keys = sorted({k for o, _ in curves for k in o if not is_neutral(k)})
    differing = [k for k in keys if len({comparable(o.get(k)) for o, _ in curves}) > 1]
    runs = {}
    for number, (o, run_rows) in enumerate(curves):
        label = ", ".join(f"{k}={o.get(k, '?')}" for k in differing) or f"run {number}"
        runs[label] = run_rows
    metrics = [m for m in ("loss", "elbo", "kl") if any(m in r for _, rs in curves for r in rs)]
    return draw_curves(runs, metrics, out / "curves.png") if metrics else None


def x_key(value: str | None) -> tuple:
    number = as_number(value)
    return (number is None, number if number is not None else 0.0, str(value))


def plot_series(
    rows: list, series: list[str], out: Path, metric: str, against: str, override_keys: list, metric_keys: list
) -> Path:
    """The metric against ``against``, one line per series (a marker alone for a series of one run)."""
    points: dict[str, list[tuple[float, float]]] = {}
    for (_, o, m), name in zip(rows, series):
        x = as_number(o.get(against))
        if x is not None and isinstance(m.get(metric), (int, float)):
            points.setdefault(name, []).append((x, m[metric]))
    if not points:
        raise SystemExit(
            f"error: no run has both a numeric override {against} and the metric {metric}; "
            f"overrides seen: {override_keys}, metrics: {metric_keys}"
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    repeated = False
    for name in sorted(points):
        by_x: dict[float, list[float]] = {}
        for x, y in points[name]:
            by_x.setdefault(x, []).append(y)  # the seeds of one setting
        xs = sorted(by_x)
        means, sds = zip(*(mean_and_sd(by_x[x]) for x in xs))
        if any(sd is not None for sd in sds):
            repeated = True
            errors = [0.0 if sd is None else sd for sd in sds]
            ax.errorbar(xs, means, yerr=errors, marker="o", capsize=0, label=name or None)
        else:
            ax.plot(xs, means, marker="o", label=name or None)
    title = f"{metric} against {against}" + ("\n(mean ± sd over seeds)" if repeated else "")
    ax.set(xlabel=against, ylabel=metric, title=title)
    xs = [x for xy in points.values() for x, _ in xy]
    if all(x > 0 for x in xs) and max(xs) / min(xs) >= 8:
        ax.set_xscale("log", base=2)
    if any(name for name in points):  # folders that name no model and differ in nothing give one unlabelled line
        ax.legend(fontsize="small")
    fig.tight_layout()
    plot = out / f"{metric.replace('/', '_')}_vs_{against.replace('/', '_')}.png"
    fig.savefig(plot, dpi=120)
    plt.close(fig)
    return plot


class MultirunSummary:
    """A Hydra callback: when a sweep ends, its folder gets report.md and report.csv with every
    job's overrides and final metrics, failed jobs included."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        pass

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = find_runs([sweep_dir]) if sweep_dir.exists() else []
        if runs:
            for path in write_report(runs, sweep_dir, None, None):
                print(f"sweep summary: {path}")

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        pass

    def on_run_end(self, config: DictConfig, **kwargs) -> None:
        pass

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        pass

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs) -> None:
        pass


def default_out(paths: list[Path]) -> Path:
    """One folder: the report goes into it. Several: a new folder of its own, as Hydra names runs,
    since each sweep folder keeps the report of its own jobs."""
    if len(paths) == 1:
        return paths[0]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out, n = Path("outputs") / "report" / stamp, 1
    while out.exists():
        out, n = out.with_name(f"{stamp}_{n}"), n + 1
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--metric", help="metric to plot, e.g. test/elbo")
    parser.add_argument("--against", help="override to put on the x axis, e.g. model.beta")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder for the report (default: the path when one is given, else outputs/report/<date>_<time>)",
    )
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        raise SystemExit(f"error: no runs (no {' or '.join(METRIC_FILES)}) under {', '.join(map(str, args.paths))}")
    out = args.out or default_out(args.paths)
    written = write_report(runs, out, args.metric, args.against)
    print(f"report of {len(runs)} runs in {out}:")
    for path in written:
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
