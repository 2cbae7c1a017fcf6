"""Sweeps end to end: every job's status, and the report of several sweeps (its series, its folder)."""

import csv
import json
import math
import re

import matplotlib.figure
import pytest
import yaml

from conftest import run_cli
from vaelab.report import main as report_main

TINY = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
]


def job_statuses(sweep):
    """Each job folder's status as the sweep's report tells it: its FAILED line, or ok."""
    return {
        job.name: (job / "FAILED").read_text().strip() if (job / "FAILED").exists() else "ok"
        for job in sorted(sweep.iterdir())
        if job.is_dir()
    }


STOPPING_TRAIN = '''"""train.py whose job with model.beta=4 is stopped once, as a scheduler's pre-emption does."""
import os
import signal
from pathlib import Path

from vaelab.models import VAE
from vaelab.training import main

step = VAE.training_step
ONCE = Path(__file__).with_name("stop_once")


def training_step(self, batch, batch_idx):
    if self.beta == 4 and ONCE.exists():
        ONCE.unlink()
        os.kill(os.getpid(), signal.SIGTERM)
    return step(self, batch, batch_idx)


VAE.training_step = training_step
main()
'''


@pytest.mark.slow
def test_a_stopped_job_resumed_to_its_end_is_no_longer_failed(tmp_path):
    script = tmp_path / "stopping_train.py"
    script.write_text(STOPPING_TRAIN)
    (tmp_path / "stop_once").touch()
    result = run_cli(["-m", "model.beta=1,4", *TINY], cwd=tmp_path, script=str(script))
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    statuses = job_statuses(sweep)
    assert statuses["0"] == "ok" and statuses["1"].startswith("stopped: received SIGTERM"), statuses
    # As the stop's message says, with the job's own overrides.
    resume = run_cli(
        ["model.beta=4", *TINY, f"hydra.run.dir={sweep / '1'}", "ckpt_path=last"], cwd=tmp_path, script=str(script)
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert (sweep / "1" / "test_metrics.json").is_file()
    assert job_statuses(sweep) == {"0": "ok", "1": "ok"}
    report_main([str(sweep)])
    assert "failed" not in (sweep / "report.md").read_text()


@pytest.mark.slow
def test_every_job_of_a_sweep_ends_ok_and_its_report_aggregates_the_seeds(tmp_path):
    """Two settings with three seeds each: six jobs, and the sweep's report gives each setting's
    mean and sample standard deviation over its seeds, as a hand computation from the jobs' files."""
    result = run_cli(["-m", "model=beta_vae", "model.beta=1,4", "seed=0,1,2", *TINY], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert job_statuses(sweep) == {str(job): "ok" for job in range(6)}, result.stderr[-3000:]
    metrics = [json.loads((sweep / str(job) / "test_metrics.json").read_text()) for job in range(6)]
    assert [m["test/beta"] for m in metrics] == [1, 1, 1, 4, 4, 4]
    report = (sweep / "report.md").read_text()
    assert "failed" not in report and report.count("| beta_vae |") == 2 + 6  # two settings, six jobs
    with open(sweep / "report_seeds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["model.beta"], row["seeds"], row["n"]) for row in rows] == [("1", "0 1 2", "3"), ("4", "0 1 2", "3")]
    for row, jobs in zip(rows, ([0, 1, 2], [3, 4, 5])):
        for key in ("test/elbo", "test/kl", "test/recon"):
            values = [metrics[j][key] for j in jobs]
            assert len(set(values)) == 3  # the seeds gave three different runs
            mean = sum(values) / 3
            sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
            assert float(row[f"{key} mean"]) == pytest.approx(mean, rel=1e-12)
            assert float(row[f"{key} sd"]) == pytest.approx(sd, rel=1e-9)


def fake_run(folder, overrides, metrics, model_target=None, choices=None):
    """A run folder as train.py leaves it, as far as the report reads it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / "test_metrics.json").write_text(json.dumps({**metrics, "ckpt_path": "x"}))
    if model_target:
        (folder / "config.yaml").write_text(yaml.safe_dump({"model": {"_target_": model_target, "beta": 1.0}}))
    if choices:
        (folder / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}}))


@pytest.fixture
def plotted(monkeypatch):
    """The figures the report saves, still open: their lines are what the plot shows."""
    figures = []
    save = matplotlib.figure.Figure.savefig

    def keep(self, *args, **kwargs):
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", keep)
    return figures


def series(figure):
    return {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in figure.axes[0].get_lines()}


def two_sweeps(root):
    """The README's dSprites sweep in small: a beta-VAE sweep and a one-job beta-TCVAE sweep."""
    common = ["experiment=dsprites_beta_sweep", "trainer.max_epochs=6", "trainer.enable_progress_bar=False"]
    for job, beta in enumerate([1, 4, 16]):
        fake_run(
            root / "bvae" / str(job),
            [*common, "model=beta_vae", f"model.beta={beta}"],
            {"test/mig": 0.1 * beta},
            model_target="vaelab.models.BetaVAE",
        )
    fake_run(
        root / "tcvae" / "0",
        [*common, "model=beta_tcvae", "model.beta=6"],
        {"test/mig": 0.39},
        model_target="vaelab.models.BetaTCVAE",
    )
    (root / "bvae" / "report.md").write_text("the sweep's own report\n")
    return root / "bvae", root / "tcvae"


def test_the_report_of_two_models_draws_one_series_each_into_a_folder_of_its_own(tmp_path, monkeypatch, plotted):
    bvae, tcvae = two_sweeps(tmp_path)
    monkeypatch.chdir(tmp_path)
    report_main([str(bvae), str(tcvae), "--metric", "test/mig", "--against", "model.beta"])
    (figure,) = plotted
    assert series(figure) == {
        "model=beta_tcvae": [(6.0, 0.39)],
        "model=beta_vae": [(1.0, 0.1), (4.0, 0.4), (16.0, pytest.approx(1.6))],
    }
    assert [t.get_text() for t in figure.axes[0].get_legend().get_texts()] == ["model=beta_tcvae", "model=beta_vae"]
    assert (bvae / "report.md").read_text() == "the sweep's own report\n"  # neither sweep's report is touched
    assert not (tcvae / "report.md").exists()
    (out,) = (tmp_path / "outputs" / "report").iterdir()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", out.name)
    assert (out / "test_mig_vs_model.beta.png").stat().st_size > 1000
    lines = (out / "report.md").read_text().splitlines()
    assert lines[0].startswith("| run | series | experiment | model | model.beta |")
    assert [line.split(" | ")[1] for line in lines[2:]] == ["model=beta_tcvae", *["model=beta_vae"] * 3]
    assert [line.split(" | ")[4] for line in lines[2:]] == ["6", "1", "4", "16"]  # along the x axis


def test_the_report_says_where_it_wrote(tmp_path, monkeypatch, capsys):
    bvae, tcvae = two_sweeps(tmp_path)
    monkeypatch.chdir(tmp_path)
    report_main([str(bvae), str(tcvae)])
    report_main([str(bvae), str(tcvae)])  # in the same second: a second folder, not the first again
    first, second = sorted((tmp_path / "outputs" / "report").iterdir())
    assert second.name.startswith(first.name)
    printed = capsys.readouterr().out
    assert f"report of 4 runs in {first.relative_to(tmp_path)}" in printed
    assert f"report of 4 runs in {second.relative_to(tmp_path)}" in printed
    report_main([str(bvae), str(tcvae), "--out", str(tmp_path / "mine")])
    assert (tmp_path / "mine" / "report.md").is_file()


def test_a_model_named_only_in_the_config_is_a_series_of_its_own(tmp_path, plotted):
    """Runs whose model was changed in a config file, not on the command line: the class tells them apart."""
    for job, (beta, target) in enumerate([(1, "BetaVAE"), (4, "BetaVAE"), (6, "BetaTCVAE")]):
        fake_run(
            tmp_path / "runs" / str(job), [f"model.beta={beta}"], {"test/mig": beta / 10}, f"vaelab.models.{target}"
        )
    report_main([str(tmp_path / "runs"), "--metric", "test/mig", "--against", "model.beta"])
    assert series(plotted[0]) == {
        "model._target_=BetaTCVAE": [(6.0, 0.6)],
        "model._target_=BetaVAE": [(1.0, 0.1), (4.0, 0.4)],
    }


def test_series_split_on_a_differing_setting_but_not_on_display_or_on_an_equal_default(tmp_path, plotted):
    choices = {"model": "beta_vae", "data": "digits"}
    runs = [
        # batch 64 given on the command line, and batch 64 by the config: the same setting.
        (["model.beta=1", "data.batch_size=64", "trainer.enable_progress_bar=false"], 64),
        (["model.beta=4"], 64),
        (["model.beta=1", "data.batch_size=128"], 128),
        (["model.beta=4", "data.batch_size=128", "trainer.enable_progress_bar=true"], 128),
    ]
    for job, (overrides, batch) in enumerate(runs):
        folder = tmp_path / "runs" / str(job)
        fake_run(folder, overrides, {"test/elbo": -float(job)}, choices=choices)
        config = {"model": {"_target_": "vaelab.models.BetaVAE"}, "data": {"batch_size": batch}}
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    report_main([str(tmp_path / "runs"), "--metric", "test/elbo", "--against", "model.beta"])
    assert series(plotted[0]) == {
        "data.batch_size=128": [(1.0, -2.0), (4.0, -3.0)],
        "data.batch_size=64": [(1.0, 0.0), (4.0, -1.0)],
    }
    # The first two alone: batch 64 both, one by the command line and one by the config, so one
    # line, labelled by its model.
    runs = [str(tmp_path / "runs" / job) for job in ("0", "1")]
    report_main([*runs, "--metric", "test/elbo", "--against", "model.beta", "--out", str(tmp_path / "two")])
    assert series(plotted[1]) == {"model=beta_vae": [(1.0, 0.0), (4.0, -1.0)]}


def test_the_plot_of_a_seeded_sweep_draws_each_settings_mean_and_standard_deviation(tmp_path, plotted):
    elbos = {1: [-100.0, -102.0, -104.0], 4: [-110.0, -111.0, -115.0]}
    for beta, values in elbos.items():
        for seed, elbo in enumerate(values):
            fake_run(tmp_path / "runs" / f"{beta}-{seed}", [f"model.beta={beta}", f"seed={seed}"], {"test/elbo": elbo})
    report_main([str(tmp_path / "runs"), "--metric", "test/elbo", "--against", "model.beta"])
    (line,) = series(plotted[0]).values()  # one line: the seeds are no series of their own
    assert line == [(1.0, -102.0), (4.0, pytest.approx(-112.0))]
    (bars,) = plotted[0].axes[0].collections
    spans = [segment[:, 1] for segment in bars.get_segments()]
    assert [tuple(span) for span in spans] == [(-104.0, -100.0), pytest.approx((-112 - 7**0.5, -112 + 7**0.5))]
    assert "mean ± sd over seeds" in plotted[0].axes[0].get_title()


def test_a_diverged_seed_makes_its_settings_mean_nan_not_the_report_fail(tmp_path):
    for seed, elbo in enumerate([-100.0, float("nan"), -104.0]):
        fake_run(tmp_path / "runs" / str(seed), ["model.beta=1", f"seed={seed}"], {"test/elbo": elbo, "test/kl": 1.0})
    report_main([str(tmp_path / "runs")])
    with open(tmp_path / "runs" / "report_seeds.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["n"] == "3" and math.isnan(float(row["test/elbo mean"])) and math.isnan(float(row["test/elbo sd"]))
    assert float(row["test/kl mean"]) == 1.0 and float(row["test/kl sd"]) == 0.0
