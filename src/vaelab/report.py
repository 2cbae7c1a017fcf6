"""One table of many runs: ``vaelab-report PATH [PATH ...] --metric test/elbo --against model.beta``.

PATH is a multirun folder, a run folder or any folder above them. Every run found under it
(a folder with ``test_metrics.json`` from train.py or ``metrics.json`` from eval.py) becomes a row:
its command-line overrides and its final metrics. Writes ``report.md``, ``report.csv`` and, with
``--against``, a plot of the metric against that override, into ``--out`` (default: the first PATH).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from hydra.core.utils import JobReturn
    from omegaconf import DictConfig

METRIC_FILES = ("test_metrics.json", "metrics.json", "FAILED")


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


def as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def write_report(runs: list[Path], out: Path, metric: str | None, against: str | None) -> list[Path]:
    rows = [(run, *read_run(run)) for run in runs]
    override_keys = sorted({k for _, o, _ in rows for k in o})
    metric_keys = sorted({k for _, _, m in rows for k in m}, key=lambda k: (k != "status", k))
    header = ["run", *override_keys, *metric_keys]
    table = [
        [str(run), *(o.get(k, "") for k in override_keys), *(m.get(k, "") for k in metric_keys)] for run, o, m in rows
    ]
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in table]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    written = [out / "report.md", out / "report.csv"]
    if against:
        if metric is None:
            raise SystemExit("error: --against needs --metric; name the metric to plot")
        points = sorted(
            (as_number(o[against]), m[metric])
            for _, o, m in rows
            if against in o and isinstance(m.get(metric), (int, float)) and as_number(o[against]) is not None
        )
        if not points:
            raise SystemExit(
                f"error: no run has both a numeric override {against} and the metric {metric}; "
                f"overrides seen: {override_keys}, metrics: {metric_keys}"
            )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set(xlabel=against, ylabel=metric, title=f"{metric} against {against}")
        if all(p[0] > 0 for p in points) and max(p[0] for p in points) / min(p[0] for p in points) >= 8:
            ax.set_xscale("log", base=2)
        fig.tight_layout()
        plot = out / f"{metric.replace('/', '_')}_vs_{against.replace('/', '_')}.png"
        fig.savefig(plot, dpi=120)
        plt.close(fig)
        written.append(plot)
    return written


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--metric", help="metric to plot, e.g. test/elbo")
    parser.add_argument("--against", help="override to put on the x axis, e.g. model.beta")
    parser.add_argument("--out", type=Path, help="folder for the report (default: the first path)")
    args = parser.parse_args(argv)
    runs = find_runs(args.paths)
    if not runs:
        raise SystemExit(f"error: no runs (no {' or '.join(METRIC_FILES)}) under {', '.join(map(str, args.paths))}")
    for path in write_report(runs, args.out or args.paths[0], args.metric, args.against):
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
