"""data=tensors: a person's own array file, images or vectors, trained and evaluated end to end."""

import csv
import json

import numpy as np
import pytest
import torch

from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.training import train

QUICK = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def tabular(path, n=600, seed=0):
    """Rows of 6 real numbers driven by 2 hidden factors plus noise: a latent-variable model fits them."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 2))
    mixing = rng.normal(size=(2, 6))
    np.save(path, (np.tanh(factors) @ mixing + 0.05 * rng.normal(size=(n, 6))).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tabular")
    data = tabular(root / "table.npy")
    overrides = [*QUICK, "data=tensors", f"data.path={data}", "likelihood=gaussian_learned", "net=mlp"]
    cfg = compose_config([*overrides, "trainer.max_epochs=60", "data.batch_size=30"], root / "run")
    return root, cfg, train(cfg)


def test_a_table_of_vectors_trains_end_to_end(tabular_run, capfd):
    root, cfg, metrics = tabular_run
    assert cfg.data.image_shape == [6, 1, 1] and cfg.data.num_levels is None  # read from the file
    with open(root / "run" / "curves.csv") as f:
        val = [float(row["elbo"]) for row in csv.DictReader(f) if row["split"] == "val"]
    assert len(val) == 60 and val[-1] > val[0] + 3, val  # it learned: nats per row, not a constant
    # A density of the rows as they are (no dequantization, no bits/dim offset) that beats the best
    # independent Gaussian per column, which knows nothing of the two hidden factors.
    data = np.load(root / "table.npy").astype(np.float64)
    independent = -0.5 * np.log(2 * np.pi * np.e * data.var(0)).sum()
    assert metrics["test/elbo"] > independent + 1, (metrics["test/elbo"], independent)
    assert not list((root / "run" / "images").glob("reconstructions_*.png"))  # no images of vectors
    assert (root / "run" / "images" / "curves.png").is_file()


def test_the_splits_are_the_files_rows_held_out_once(tabular_run):
    from hydra.utils import instantiate

    _, cfg, _ = tabular_run
    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    sizes = {name: len(split) for name, split in datamodule.splits.items()}
    assert sizes == {"train": 480, "val": 60, "test": 60}
    rows = torch.cat([datamodule.splits[name].images.flatten(1) for name in ("train", "val", "test")])
    whole = torch.from_numpy(np.load(cfg.data.path))
    assert torch.equal(rows[rows[:, 0].argsort()], whole[whole[:, 0].argsort()])  # every row once, as saved
    x, _ = datamodule.dataset("train", train=True)[datamodule.train_dataloader().sampler.__iter__().__next__()]
    assert x.dtype == torch.float32 and x.shape == (30, 6, 1, 1)
    assert any(torch.equal(row, x[0].flatten()) for row in whole)  # given to the model as saved


def test_eval_of_a_vector_model_measures_it_and_skips_the_pictures(tabular_run, capsys):
    from vaelab.eval import evaluate_checkpoint

    root, _, _ = tabular_run
    cfg = compose_config([f"ckpt_path={root / 'run' / 'checkpoints' / 'best.ckpt'}", "k=20"], root / "eval", "eval")
    result = evaluate_checkpoint(cfg)
    assert "pictures: skipped, the data are vectors" in capsys.readouterr().err
    assert result["nll"] < -result["elbo"] + 1e-6  # the k-sample bound is at least as tight as the ELBO
    assert json.loads((root / "eval" / "metrics.json").read_text())["num_examples"] == 60
    assert not (root / "eval" / "images").exists()


def test_images_with_their_own_splits_train_with_the_image_pictures(tmp_path):
    rng = np.random.default_rng(1)
    prototypes = rng.integers(0, 256, (3, 1, 8, 8))
    split = {
        n: (prototypes[rng.integers(0, 3, n)] + rng.integers(-20, 20, (n, 1, 8, 8))).clip(0, 255) for n in (90, 30)
    }
    np.savez(
        tmp_path / "images.npz",
        train=split[90].astype(np.uint8),
        val=split[30][:15].astype(np.uint8),
        test=split[30][15:].astype(np.uint8),
    )
    overrides = [*QUICK, "data=tensors", f"data.path={tmp_path / 'images.npz'}", "trainer.max_epochs=1"]
    cfg = compose_config([*overrides, "data.batch_size=30"], tmp_path / "run")
    assert cfg.data.image_shape == [1, 8, 8] and cfg.data.num_levels == 256
    metrics = train(cfg)
    assert (tmp_path / "run" / "images" / "reconstructions_epoch000.png").is_file()
    assert metrics["test/bpd"] > 0


@pytest.mark.parametrize(
    "make, overrides, message",
    [
        (lambda p: np.save(p / "x.npy", np.zeros((10, 2, 3), np.float32)), [], "holds an array of shape [10, 2, 3]"),
        (
            lambda p: np.save(p / "x.npy", np.zeros((10, 4), np.float32)),
            ["likelihood=bernoulli"],
            "likelihood=gaussian",
        ),
        (
            lambda p: np.savez(p / "x.npz", a=np.zeros((10, 4)), b=np.zeros((10, 4))),
            [],
            "name the data with data.key=<name>",
        ),
        (lambda p: np.savez(p / "x.npz", a=np.zeros((10, 4))), ["data.key=c"], "has no array 'c'; choose data.key"),
        (lambda p: np.save(p / "x.npy", np.full((10, 4), 300, np.int32)), [], "discrete data must be 0..255"),
        (lambda p: np.save(p / "x.npy", np.full((10, 4), np.nan, np.float32)), [], "NaN or infinite values"),
        (lambda p: None, [], "does not exist"),
        (
            lambda p: np.save(p / "x.npy", np.ones((10, 4), np.uint8)),
            ["data.num_levels=null"],
            "data.num_levels=null, but a continuous likelihood on discrete data",
        ),
    ],
    ids=["3-d", "bernoulli-on-reals", "two-arrays", "no-such-key", "out-of-range", "nan", "missing", "no-levels"],
)
def test_bad_files_fail_before_training_with_one_line(tmp_path, make, overrides, message):
    make(tmp_path)
    name = next((p.name for p in tmp_path.iterdir()), "x.npy")
    likelihood = [] if any(o.startswith("likelihood=") for o in overrides) else ["likelihood=gaussian"]
    cfg = compose_config([*QUICK, "data=tensors", f"data.path={tmp_path / name}", *likelihood, *overrides], tmp_path)
    with pytest.raises(UserError) as err:
        train(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()


def test_a_pt_dictionary_of_float_images_trains_and_draws_its_pictures(tmp_path):
    """A .pt dict of real-valued images [N, 1, 8, 8] in [0, 1], with labels: continuous data."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 1, 8, 8, generator=g)[torch.randint(3, (120,), generator=g)]
    images = (images + 0.02 * torch.randn(120, 1, 8, 8, generator=g)).clamp(0, 1)
    torch.save({"images": images, "labels": torch.arange(120) % 3}, tmp_path / "x.pt")
    overrides = [*QUICK, "data=tensors", f"data.path={tmp_path / 'x.pt'}", "likelihood=gaussian"]
    cfg = compose_config([*overrides, "trainer.max_epochs=1", "data.batch_size=24"], tmp_path / "run")
    assert cfg.data.image_shape == [1, 8, 8] and cfg.data.num_levels is None
    train(cfg)
    assert (tmp_path / "run" / "images" / "reconstructions_epoch000.png").is_file()
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data)
    datamodule.prepare()
    labels = torch.cat([s.labels for s in datamodule.splits.values()])
    assert sorted(labels.tolist()) == sorted((torch.arange(120) % 3).tolist())


@pytest.mark.parametrize("top, levels", [(1, 2), (16, 17), (255, 256)])
def test_the_levels_of_integer_data_are_read_from_the_file(tmp_path, top, levels):
    values = np.arange(80 * 4).reshape(80, 4) % (top + 1)  # every value 0..top
    np.save(tmp_path / "x.npy", values.astype(np.uint8))
    cfg = compose_config(["data=tensors", f"data.path={tmp_path / 'x.npy'}"], tmp_path / "run")
    assert cfg.data.num_levels == levels
