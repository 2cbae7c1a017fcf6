"""Learning curves as a file and a picture: the rows ``vaelab.callbacks.LearningCurves`` keeps
({"split": "train" or "val", "epoch": float, <metric>: value}), written to ``curves.csv`` and drawn
one panel per metric; ``vaelab-report`` draws several runs' into one picture. No torch here, so
that the report stays quick to start."""

from __future__ import annotations

import csv
from pathlib import Path


def write_curves(rows: list[dict], metrics: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["split", "epoch", *metrics])
        writer.writeheader()
        writer.writerows(rows)


def read_curves(path: Path) -> list[dict]:
    """The rows of a ``curves.csv`` (LearningCurves), numbers as floats, empty cells left out."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: v if k == "split" else float(v) for k, v in row.items() if v not in ("", None)} for row in rows]


def draw_curves(runs: dict[str, list[dict]], metrics: list[str], path: Path) -> Path:
    """One panel per metric against the epoch: training means as lines, validations as lines with
    markers; ``runs`` maps a label (the legend's, "train" for a single run) to its rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [m for m in metrics if any(m in r for rows in runs.values() for r in rows)]
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.2), squeeze=False)
    single = len(runs) == 1
    for ax, metric in zip(axes[0], shown):
        for number, (label, rows) in enumerate(runs.items()):
            color = f"C{number % 10}"
            for split, style in (("train", "-"), ("val", "o-")):
                xy = [(r["epoch"], r[metric]) for r in rows if r["split"] == split and metric in r]
                if xy:
                    name = split if single else f"{label} ({split})"
                    ax.plot(*zip(*xy), style, color=f"C{int(split == 'val')}" if single else color, label=name, ms=3)
        ax.set(xlabel="epoch", title=metric)
        ax.legend(fontsize="x-small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
