"""Each option's effect, read back from what a training run logged (metrics.csv, checkpoints),
against values computed here independently of the implementation."""

import csv
import json
from pathlib import Path

import pytest
import torch

from vaelab.config import compose_config
from vaelab.training import train

QUICK = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "trainer.limit_val_batches=1"]
DIGITS_STEPS_PER_EPOCH = 1437 // 32  # digits: 1437 training images, batch 32, the last partial batch dropped


def logged_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def logged_series(run: Path, name: str) -> dict[int, float]:
    """{step: value} of a per-step training metric."""
    return {int(row["step"]): float(row[name]) for row in logged_rows(run) if row.get(name)}


# ---- KL schedules: beta(t) and C(t) as logged, against their closed forms ------------------
def linear(step: int) -> tuple[float, float | None]:
    warmup = 2 * DIGITS_STEPS_PER_EPOCH  # warmup_epochs=2
    return 4.0 * min(1.0, step / warmup), None


def cyclical(step: int) -> tuple[float, float | None]:
    period = 3 * DIGITS_STEPS_PER_EPOCH / 4  # total_epochs = max_epochs = 3, four cycles
    position = (step % period) / period
    return 4.0 * min(1.0, position / 0.5), None


def capacity(step: int) -> tuple[float, float | None]:
    return 1000.0, 25.0 * min(1.0, step / (3 * DIGITS_STEPS_PER_EPOCH))  # C rises to 25 nats over 3 epochs


@pytest.mark.parametrize(
    "schedule, overrides, closed_form",
    [
        ("linear", ["kl_schedule.warmup_epochs=2"], linear),
        ("cyclical", [], cyclical),
        ("capacity", [], capacity),
    ],
)
def test_kl_schedules_given_in_epochs_run_over_those_epochs(schedule, overrides, closed_form, tmp_path):
    cfg = compose_config(
        [
            *QUICK,
            "model=beta_vae",
            f"kl_schedule={schedule}",
            *overrides,
            "trainer.max_epochs=3",
            "trainer.log_every_n_steps=5",
            "test=false",
        ],
        tmp_path,
    )
    train(cfg)
    betas = logged_series(tmp_path, "train/beta")
    assert max(betas) >= 2 * DIGITS_STEPS_PER_EPOCH  # logged across all three epochs
    for step, beta in betas.items():
        expected_beta, expected_capacity = closed_form(step)
        assert beta == pytest.approx(expected_beta, abs=1e-5), f"step {step}"
        if expected_capacity is not None:
            assert logged_series(tmp_path, "train/capacity")[step] == pytest.approx(expected_capacity, abs=1e-4)


# ---- checkpoint selection ----------------------------------------------------------------
def test_the_best_checkpoint_is_the_best_validation_elbo_and_last_the_last_epoch(tmp_path):
    """Under capacity control val/loss measures |KL - C(t)| for a moving C(t), not how good the model
    is: in this run it is lowest after epoch 1 while the bound is best after epoch 0. The bound
    (val/elbo) is what is selected, for every model."""
    cfg = compose_config(
        [
            *QUICK,
            "model=beta_vae",
            "kl_schedule=capacity",
            "kl_schedule.c_max=4",
            "trainer.max_epochs=4",
            "trainer.limit_val_batches=1.0",
        ],
        tmp_path,
    )
    train(cfg)
    val_elbo = {int(row["epoch"]): float(row["val/elbo"]) for row in logged_rows(tmp_path) if row.get("val/elbo")}
    best_epoch = max(val_elbo, key=val_elbo.get)
    chosen = json.loads((tmp_path / "test_metrics.json").read_text())["ckpt_path"]
    assert Path(chosen).name == "best.ckpt"
    assert torch.load(chosen, weights_only=False)["epoch"] == best_epoch, val_elbo
    # last.ckpt (what ckpt_path=last resumes) is the last epoch's, also when it was not the best
    # (Lightning 2.6's save_last writes it only beside a new best).
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert best_epoch < 3 and last["epoch"] == 3, (best_epoch, last["epoch"])


# ---- learning curves -------------------------------------------------------------------------
def test_the_runs_curves_are_what_it_logged_mid_epoch_validations_included(tmp_path, monkeypatch):
    """curves.csv holds each epoch's training means and every validation, two per epoch here, with
    the values metrics.csv logged; curves.png draws them: each panel's lines are those numbers."""
    import matplotlib.figure

    drawn = []
    save = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: (drawn.append(fig), save(fig, *a, **k))
    )
    cfg = compose_config(
        [*QUICK, "trainer.max_epochs=2", "+trainer.val_check_interval=0.5", "trainer.limit_val_batches=2"], tmp_path
    )
    train(cfg)
    with open(tmp_path / "curves.csv") as f:
        curves = list(csv.DictReader(f))
    rows = logged_rows(tmp_path)
    train_logged = [r for r in rows if r.get("train/loss_epoch")]
    val_logged = [r for r in rows if r.get("val/loss")]
    train_curve = [r for r in curves if r["split"] == "train"]
    val_curve = [r for r in curves if r["split"] == "val"]
    assert [float(r["epoch"]) for r in train_curve] == [1.0, 2.0]
    assert [float(r["epoch"]) for r in val_curve] == [0.5, 1.0, 1.5, 2.0]
    for name in ("loss", "elbo", "kl"):
        assert [float(r[name]) for r in train_curve] == pytest.approx(
            [float(r[f"train/{name}_epoch"]) for r in train_logged], rel=1e-6
        )
        val_values = [float(r[f"val/{name}"]) for r in val_logged]
        assert [float(r[name]) for r in val_curve] == pytest.approx(val_values, rel=1e-6)
    import matplotlib.image

    picture = matplotlib.image.imread(tmp_path / "images" / "curves.png")
    assert picture.shape[1] > 2 * picture.shape[0]  # three panels side by side
    (figure,) = [f for f in drawn if [ax.get_title() for ax in f.axes] == ["loss", "elbo", "kl"]]
    for ax, name in zip(figure.axes, ("loss", "elbo", "kl")):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for split, curve in (("train", train_curve), ("val", val_curve)):
            assert list(lines[split].get_xdata()) == [float(r["epoch"]) for r in curve]
            assert list(lines[split].get_ydata()) == pytest.approx([float(r[name]) for r in curve], rel=1e-6)


# ---- bits/dim of a continuous likelihood on discrete data -------------------------------------
def test_gaussian_bits_per_dim_on_digits_is_a_bound_that_beats_a_uniform_guess(tmp_path):
    """Digits have 17 grey levels, so a uniform guess costs log2(17) = 4.09 bits/dim. A trained
    model's bits/dim is a bound on a discrete distribution: at least 0, and below the guess."""
    import math

    cfg = compose_config(
        [
            *QUICK,
            "likelihood=gaussian_learned",
            "likelihood.learn_sigma=pixel",
            "trainer.max_epochs=10",
            "trainer.limit_val_batches=1.0",
        ],
        tmp_path,
    )
    train(cfg)
    bpd = json.loads((tmp_path / "test_metrics.json").read_text())["test/bpd"]
    assert 0 <= bpd < math.log2(17), bpd


# ---- debug=overfit ------------------------------------------------------------------------
def test_debug_overfit_trains_and_validates_on_the_same_batches_at_the_configured_batch_size(tmp_path):
    import lightning as L

    import vaelab.building as building

    seen = {"train": [], "val": []}

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen["train"].append(batch[1])

        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            if not trainer.sanity_checking:
                seen["val"].append(batch[1])

    cfg = compose_config([*QUICK, "debug=overfit", "trainer.max_epochs=40", "trainer.limit_val_batches=1.0"], tmp_path)
    original = building.build_callbacks
    building.build_callbacks = lambda c: [*original(c), Spy()]
    try:
        metrics = train(cfg)
    finally:
        building.build_callbacks = original
    assert [len(labels) for labels in seen["train"]] == [32, 32] * 40  # two batches of the configured size
    first_epoch = torch.cat(seen["train"][:2]).sort().values
    assert torch.equal(torch.cat(seen["train"][-2:]).sort().values, first_epoch)  # the same images every epoch
    assert torch.equal(torch.cat(seen["val"][-1:]).sort().values, first_epoch)  # validated on those images
    rows = [row for row in logged_rows(tmp_path) if row.get("val/elbo")]
    assert float(rows[-1]["val/elbo"]) > float(rows[0]["val/elbo"]) + 5  # 64 images are learned far past epoch 0
    assert metrics["val/elbo"] == pytest.approx(float(rows[-1]["val/elbo"]))


# ---- what the loggers receive -------------------------------------------------------------
def wandb_records(run_file: Path):
    """The protobuf Records of a W&B offline run's .wandb file: a LevelDB-style log (7-byte file
    header, 32 KiB blocks, chunks of crc32, length, type)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, pos, parts = run_file.read_bytes(), 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_offline_config(run_file: Path) -> dict:
    """The config a W&B offline run recorded."""
    config = {}
    for record in wandb_records(run_file):
        kind = record.WhichOneof("record_type")
        items = record.config.update if kind == "config" else record.run.config.update if kind == "run" else []
        for item in items:
            config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config


def wandb_offline_tags(run_file: Path) -> list[str]:
    return [tag for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run" for tag in r.run.tags]


def test_every_logger_receives_the_whole_resolved_run_config(tmp_path):
    cfg = compose_config(
        [*QUICK, "logger=wandb", "trainer.max_epochs=1", "data.batch_size=16", "seed=5", "test=false"], tmp_path
    )
    train(cfg)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    logged = wandb_offline_config(run_file)
    assert logged["data"]["batch_size"] == 16, sorted(logged)
    assert logged["seed"] == 5 and logged["trainer"]["max_epochs"] == 1
    assert logged["model"]["latent_dim"] == cfg.size.latent_dim and logged["model"]["net"]["kind"] == "mlp"


def test_mlflow_receives_the_config_the_curves_and_the_image_grids(tmp_path):
    """logger=mlflow with its default local store in the run folder, read back with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    cfg_overrides = [*QUICK, "logger=[csv,mlflow]", "data.batch_size=16", "seed=5", "trainer.log_every_n_steps=5"]
    cfg = compose_config(
        [
            *QUICK,
            "logger=[csv,mlflow]",
            "trainer.max_epochs=2",
            "data.batch_size=16",
            "seed=5",
            "trainer.log_every_n_steps=5",
        ],
        tmp_path,
    )
    train(cfg)
    client = MlflowClient(tracking_uri=f"file:{tmp_path / 'mlruns'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "vaelab"]
    (run,) = client.search_runs([experiment.experiment_id])
    params = run.data.params
    assert params["data/batch_size"] == "16" and params["seed"] == "5" and params["model/net/kind"] == "mlp"
    steps = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    logged = logged_series(tmp_path, "train/loss")
    assert steps.keys() == logged.keys() and len(steps) >= 10
    assert [steps[k] for k in sorted(steps)] == pytest.approx([logged[k] for k in sorted(logged)], rel=1e-6)
    assert len(client.get_metric_history(run.info.run_id, "val/elbo")) == 2
    assert "test/elbo" in run.data.metrics
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert any("reconstructions" in path for path in images), images
    # Resumed for a third epoch, the run goes on in the same MLflow run.
    train(compose_config([*cfg_overrides, "trainer.max_epochs=3", "ckpt_path=last"], tmp_path))
    (again,) = client.search_runs([experiment.experiment_id])
    assert again.info.run_id == run.info.run_id
    assert len(client.get_metric_history(run.info.run_id, "val/elbo")) == 3
    assert "ckpt_path=last" in client.get_run(run.info.run_id).data.tags["resumed_with"]


# ---- extending a run ----------------------------------------------------------------------
def test_a_run_with_a_schedule_in_epochs_can_be_extended_as_the_message_says(tmp_path):
    from vaelab.errors import UserError

    base = [*QUICK, "model=beta_vae", "kl_schedule=capacity", "test=false", "trainer.log_every_n_steps=5"]
    train(compose_config([*base, "trainer.max_epochs=2"], tmp_path))
    with pytest.raises(UserError) as refused:
        train(compose_config([*base, "trainer.max_epochs=3", "ckpt_path=last"], tmp_path))
    message = str(refused.value)
    assert "kl_schedule.epochs follows trainer.max_epochs (2 in the run, 3 now)" in message
    assert "add kl_schedule.epochs=2" in message
    train(compose_config([*base, "trainer.max_epochs=3", "ckpt_path=last", "kl_schedule.epochs=2"], tmp_path))
    capacity = logged_series(tmp_path, "train/capacity")
    assert max(capacity) >= 2 * DIGITS_STEPS_PER_EPOCH  # the third epoch was trained and logged
    for step, value in capacity.items():  # the schedule of the first run, holding at its end value
        assert value == pytest.approx(25.0 * min(1.0, step / (2 * DIGITS_STEPS_PER_EPOCH)), abs=1e-4)


def test_tags_reach_the_loggers(tmp_path):
    cfg = compose_config(
        [
            *QUICK,
            "logger=wandb",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=2",
            "test=false",
            "tags=[baseline,digits]",
        ],
        tmp_path,
    )
    train(cfg)
    (run_file,) = (tmp_path / "wandb").glob("offline-run-*/run-*.wandb")
    assert wandb_offline_tags(run_file) == ["baseline", "digits"]
    assert wandb_offline_config(run_file)["tags"] == ["baseline", "digits"]


# ---- the conveniences of a run: seed, early stopping, learning-rate monitor, config tree ------
def run_seed(run: Path) -> int:
    import yaml

    return yaml.safe_load((run / "config.yaml").read_text())["seed"]


def test_a_null_seed_is_drawn_recorded_and_kept_on_resume(tmp_path):
    base = [*QUICK, "seed=null", "test=false", "trainer.limit_train_batches=2"]
    train(compose_config([*base, "trainer.max_epochs=1"], tmp_path / "a"))
    train(compose_config([*base, "trainer.max_epochs=1"], tmp_path / "b"))
    seed_a, seed_b = run_seed(tmp_path / "a"), run_seed(tmp_path / "b")
    assert isinstance(seed_a, int) and seed_a != seed_b  # drawn anew for each run (1 in 2**32 to collide)
    train(compose_config([*base, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path / "a"))
    assert run_seed(tmp_path / "a") == seed_a
    checkpoint = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["vaelab"]["config"]["seed"] == seed_a
    assert {int(row["epoch"]) for row in logged_rows(tmp_path / "a") if row.get("val/elbo")} == {0, 1}


def test_early_stopping_by_name_ends_the_run_when_the_bound_stops_improving(tmp_path):
    overrides = [
        *QUICK,
        "callbacks=[default,early_stopping]",
        "trainer.max_epochs=6",
        "test=false",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1000",
    ]
    train(compose_config(overrides, tmp_path))
    epochs = {int(row["epoch"]) for row in logged_rows(tmp_path) if row.get("val/elbo")}
    assert epochs == {0, 1}  # no gain of 1000 nats after epoch 0: patience 1 stops after epoch 1


def test_the_learning_rate_is_logged_when_a_scheduler_is_set(tmp_path):
    schedule = "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma:0.5}"
    overrides = [*QUICK, schedule, "trainer.max_epochs=3", "trainer.limit_train_batches=3", "test=false"]
    train(compose_config(overrides, tmp_path))
    rates = [float(row["lr-Adam"]) for row in logged_rows(tmp_path) if row.get("lr-Adam")]
    assert rates == pytest.approx([1e-3, 5e-4, 2.5e-4])
    train(compose_config([*QUICK, "trainer.max_epochs=1", "test=false"], tmp_path / "plain"))
    assert "lr-Adam" not in logged_rows(tmp_path / "plain")[0]  # no scheduler: no monitor


def test_print_config_shows_the_composed_config_as_a_tree(tmp_path, capsys):
    train(
        compose_config(
            [*QUICK, "extras.print_config=true", "trainer.max_epochs=1", "test=false", "trainer.limit_train_batches=1"],
            tmp_path,
        )
    )
    shown = capsys.readouterr().out
    assert "config" in shown and "latent_dim" in shown and "max_epochs: 1" in shown


def test_a_run_resumed_with_another_seed_or_a_null_seed_under_a_launcher_is_refused(tmp_path, monkeypatch):
    from vaelab.errors import UserError

    base = [*QUICK, "test=false", "trainer.limit_train_batches=2"]
    train(compose_config([*base, "trainer.max_epochs=1", "seed=4"], tmp_path))
    with pytest.raises(UserError, match=r"trained with seed=4 and this run has seed=0: .* resume with seed=4"):
        train(compose_config([*base, "trainer.max_epochs=2", "ckpt_path=last"], tmp_path))
    monkeypatch.setenv("SLURM_NTASKS", "4")
    with pytest.raises(UserError, match="seed=null would draw a different seed in each process"):
        train(compose_config([*base, "seed=null"], tmp_path / "slurm"))
