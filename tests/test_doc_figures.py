"""The docs' measured figures against the code, through benchmarks/doc_figures.py: each figure is
written where the script looks for it (once in each place, the same in all), and the cheapest
ones are measured again here, so that a change of the code that moves them fails until the docs
say what the code now gives. The others are re-measured by running the script itself."""

from __future__ import annotations

import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import doc_figures


def table(rows: list[tuple[str, ...]]) -> str:
    return "\n".join("  ".join(row) for row in rows)


def test_every_figure_is_found_in_the_docs_and_written_alike_everywhere():
    for figure in doc_figures.FIGURES:
        written = figure.documented()  # raises LookupError when a place is missing or not unique
        values = {doc_figures.parse_number(w) for w in written}
        assert len(values) == 1, f"{figure.name} is written as {written} in {figure.places}"


def test_every_figure_names_its_runs():
    for figure in doc_figures.FIGURES:
        assert figure.runs and all(run in doc_figures.RUN_BY_NAME for run in figure.runs), figure.name


@pytest.mark.slow
def test_the_estimator_variance_figures_are_what_the_code_gives(tmp_path):
    """benchmarks/estimator_variance.py --epochs 10 --draws 200 (about 10 s) against the table
    and the ratios of docs/measurements.md."""
    figures = doc_figures.selected(["estimator_variance"], quick=False)
    assert len(figures) == 11
    values, problems = doc_figures.measure(figures, tmp_path)
    rows, ok = doc_figures.check(figures, values, problems)
    assert ok, "stale figures in docs/measurements.md (documented, measured):\n" + table(rows)
