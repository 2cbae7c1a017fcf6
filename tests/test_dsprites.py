"""dSprites: the drawing's geometry, the splits, DeepMind's file format and the ground-truth interface."""

import math
from itertools import pairwise

import numpy as np
import pytest
import torch

from vaelab.data import DSpritesDataModule
from vaelab.data.dsprites import DrawnImages
from vaelab.data.factors import DSpritesFactors, GroundTruth, rotation_table
from vaelab.errors import UserError

FULL = DSpritesFactors()  # 64x64, the full grid: drawing a few images costs nothing
SQUARE, ELLIPSE, HEART = 0, 1, 2


def draw(shape=0, scale=5, orientation=0, pos_x=16, pos_y=16, grid=FULL) -> torch.Tensor:
    """One image [H, W] as float."""
    return grid.images(torch.tensor([[shape, scale, orientation, pos_x, pos_y]]))[0, 0].float()


def centre_of_mass(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(image.shape[0]), torch.arange(image.shape[1]), indexing="ij")
    mass = image.sum()
    return float((rows * image).sum() / mass), float((cols * image).sum() / mass)


def small(**kwargs) -> DSpritesDataModule:
    settings = dict(
        image_shape=[1, 32, 32], num_orientations=20, num_positions=16, val_size=500, test_size=500, batch_size=64
    )
    return DSpritesDataModule(**{**settings, **kwargs})


def write_dsprites_npz(path, sizes=(3, 2, 2, 4, 4), drop=0, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A file in the format of DeepMind's: imgs [N, 64, 64] uint8, latents_classes [N, 6] int64 (colour
    first, always 0), latents_values [N, 6] float64; the rows shuffled, the last ``drop`` left out."""
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    classes = np.concatenate([np.zeros((len(grid), 1), np.int64), grid], axis=1)
    rng = np.random.default_rng(seed)
    classes = classes[rng.permutation(len(classes))][: len(classes) - drop]
    imgs = (rng.random((len(classes), 64, 64)) < 0.1).astype(np.uint8)
    values = classes.astype(np.float64) / 10
    np.savez_compressed(path, imgs=imgs, latents_classes=classes, latents_values=values)
    return imgs, classes


def test_drawing_is_deterministic_and_binary():
    factors = FULL.sample_factors(300, torch.Generator().manual_seed(1))
    a = FULL.images(factors)
    b = DSpritesFactors(chunk=7).images(factors)  # another instance, other chunks: the same pixels
    assert a.dtype == torch.uint8 and a.shape == (300, 1, 64, 64)
    assert torch.equal(a, b)
    assert set(a.unique().tolist()) == {0, 1}
    obs = FULL.observations(factors)
    assert obs.dtype == torch.float32 and torch.equal(obs, a.float())
    assert (a.flatten(1).sum(1) > 0).all()  # every shape is drawn, none is off the canvas


def test_full_and_small_grids_count_and_split():
    full = DSpritesDataModule(image_shape=[1, 64, 64])
    assert full.ground_truth.factor_sizes == [3, 6, 40, 32, 32]
    assert full.ground_truth.factor_names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    full.prepare()
    sizes = {name: len(split) for name, split in full.splits.items()}
    assert sizes == {"train": 717280, "val": 10000, "test": 10000} and sum(sizes.values()) == 737280
    assert isinstance(full.splits["train"].images, DrawnImages)  # per batch: no 2.8 GiB tensor
    labels = torch.cat([full.splits[s].labels for s in ("train", "val", "test")])
    assert labels.shape == (737280, 5) and labels.dtype == torch.int64
    assert torch.equal(full.ground_truth.flat_index(labels).sort().values, torch.arange(737280))  # each image once
    dm = small()
    dm.prepare()
    assert dm.ground_truth.factor_sizes == [3, 6, 20, 16, 16]
    assert sum(len(s) for s in dm.splits.values()) == 3 * 6 * 20 * 16 * 16 == 92160


def test_splits_are_fixed_by_the_split_seed():
    a, b, c = small(), small(seed=7), small(split_seed=1)
    for dm in (a, b, c):
        dm.prepare()
    assert torch.equal(a.splits["test"].labels, b.splits["test"].labels)  # not the run's seed
    assert torch.equal(a.splits["test"].images[:], b.splits["test"].images[:])
    assert not torch.equal(a.splits["test"].labels, c.splits["test"].labels)


def test_scale_grows_the_area_as_its_square():
    for shape in (SQUARE, ELLIPSE, HEART):
        big, little = draw(shape, scale=5).sum(), draw(shape, scale=0).sum()
        assert 3.2 < big / little < 4.8, (shape, big, little)  # (1 / 0.5)^2 = 4, up to the pixels
    assert draw(SQUARE, scale=5).sum() == pytest.approx((2 * 0.15 * 64) ** 2, rel=0.1)


def test_pos_x_moves_the_centre_of_mass_right_and_pos_y_down():
    for shape in (SQUARE, ELLIPSE, HEART):
        rows, cols = zip(*(centre_of_mass(draw(shape, orientation=3, pos_x=p, pos_y=9)) for p in range(32)))
        assert all(b > a for a, b in pairwise(cols)), cols
        assert max(rows) - min(rows) < 0.5  # the row stays put
        assert cols[-1] - cols[0] > 30  # across most of the 64 pixels
        rows = [centre_of_mass(draw(shape, pos_x=9, pos_y=p))[0] for p in range(32)]
        assert all(b > a for a, b in pairwise(rows))


def test_rotations():
    quarter, eighth, half = 10, 5, 20  # of 40 orientations
    square = draw(SQUARE)
    # A square turned by a quarter is the same square: equal only because it is a rotation of it.
    assert torch.equal(draw(SQUARE, orientation=quarter), square)
    tilted = draw(SQUARE, orientation=eighth)  # by pi/4: other pixels, the same area
    assert not torch.equal(tilted, square) and abs(tilted.sum() / square.sum() - 1) < 0.05
    # A heart turned by pi/2 is the upright heart's image turned by 90 degrees (counter-clockwise),
    # the shape moved where the canvas's turn takes it: (pos_x, pos_y) -> (pos_y, 31 - pos_x).
    upright, turned = draw(HEART, pos_x=6, pos_y=20), draw(HEART, orientation=quarter, pos_x=20, pos_y=25)
    assert not torch.equal(upright, turned) and abs(turned.sum() / upright.sum() - 1) < 0.05
    assert (torch.rot90(upright, 1) != turned).float().sum() <= 0.05 * upright.sum()
    # An ellipse is its own turn by pi (exactly, whatever the angle); a heart is not.
    for k in range(20):
        assert torch.equal(draw(ELLIPSE, orientation=k + half), draw(ELLIPSE, orientation=k))
    assert not torch.equal(draw(HEART, orientation=3 + half), draw(HEART, orientation=3))
    cos, sin = rotation_table(40)
    angles = torch.arange(40, dtype=torch.float64) * 2 * math.pi / 40
    assert torch.allclose(cos, angles.cos(), atol=1e-12) and torch.allclose(sin, angles.sin(), atol=1e-12)


def test_the_three_shapes_differ():
    images = [draw(shape, orientation=2) for shape in (SQUARE, ELLIPSE, HEART)]
    for i in range(3):
        for j in range(i + 1, 3):
            union = (images[i] + images[j]).clamp(max=1).sum()
            assert (images[i] != images[j]).sum() > 0.2 * union


@pytest.mark.parametrize("mode", ["once", "per_batch"])
def test_observations_are_what_the_model_sees(mode):
    dm = small(draw=mode)
    dm.prepare()
    truth = dm.ground_truth
    assert isinstance(truth, GroundTruth)
    x, y = next(iter(dm.train_dataloader()))
    assert y.shape == (64, 5) and torch.equal(truth.observations(y), x)
    split = dm.splits["val"]
    assert torch.equal(truth.observations(split.labels[:100]), split.images[:100].float())
    factors = truth.sample_factors(2000, torch.Generator().manual_seed(0))
    assert factors.shape == (2000, 5) and factors.dtype == torch.int64
    for column, size in enumerate(truth.factor_sizes):  # uniform over each factor's values
        counts = torch.bincount(factors[:, column], minlength=size)
        assert len(counts) == size and counts.min() > 0.6 * 2000 / size
    assert torch.equal(
        truth.sample_factors(5, torch.Generator().manual_seed(3)),
        truth.sample_factors(5, torch.Generator().manual_seed(3)),
    )
    # Sampled factors: the data set's own images of those factor indices, wherever they fell in the split.
    names = ("train", "val", "test")
    labels = torch.cat([dm.splits[name].labels for name in names])
    images = torch.cat([dm.splits[name].images[:] for name in names])
    position = torch.empty(len(truth), dtype=torch.int64)
    position[truth.flat_index(labels)] = torch.arange(len(labels))
    assert torch.equal(truth.observations(factors), images[position[truth.flat_index(factors)]].float())


def test_drawn_images_stand_for_a_tensor():
    dm = small(draw="per_batch")
    dm.prepare()
    drawn = dm.splits["test"].images
    whole = dm.ground_truth.images(dm.splits["test"].labels)
    assert drawn.shape == whole.shape and len(drawn) == len(whole) and drawn.dtype == torch.uint8
    idx = torch.tensor([5, 0, 499])
    assert torch.equal(drawn.index_select(0, idx), whole.index_select(0, idx))
    assert torch.equal(drawn[10:20], whole[10:20]) and torch.equal(drawn[-1], whole[-1])
    assert torch.equal(drawn.to("cpu")[idx], whole[idx])


def test_deepmind_npz_round_trip(tmp_path):
    imgs, classes = write_dsprites_npz(tmp_path / "d.npz")
    dm = DSpritesDataModule(
        path=str(tmp_path / "d.npz"), image_shape=[1, 64, 64], val_size=20, test_size=20, batch_size=64
    )
    dm.prepare()
    assert {name: len(s) for name, s in dm.splits.items()} == {"train": 152, "val": 20, "test": 20}
    truth = dm.ground_truth
    assert truth.factor_sizes == [3, 2, 2, 4, 4] and truth.factor_names[0] == "shape"
    row_of = {tuple(c[1:]): i for i, c in enumerate(classes.tolist())}
    for split in dm.splits.values():
        rows = [row_of[tuple(f)] for f in split.labels.tolist()]
        assert torch.equal(split.images[:], torch.from_numpy(imgs[rows]).unsqueeze(1))
    factors = truth.sample_factors(30, torch.Generator().manual_seed(0))
    rows = [row_of[tuple(f)] for f in factors.tolist()]
    assert torch.equal(truth.observations(factors), torch.from_numpy(imgs[rows]).unsqueeze(1).float())
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 64, 64) and torch.equal(x, truth.observations(y))


def test_a_partial_file_trains_but_has_no_ground_truth(tmp_path):
    write_dsprites_npz(tmp_path / "d.npz", drop=10)
    dm = DSpritesDataModule(
        path=str(tmp_path / "d.npz"), image_shape=[1, 64, 64], val_size=20, test_size=20, batch_size=64
    )
    dm.prepare()
    assert len(dm.splits["train"]) == 142
    with pytest.raises(UserError, match="holds 182 of the 192 images .* use the complete file"):
        dm.ground_truth  # noqa: B018


def bad_file(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_bad_files_and_settings_fail_with_one_line(tmp_path):
    imgs = np.zeros((10, 64, 64), np.uint8)
    classes = np.zeros((10, 6), np.int64)
    classes[:, 5] = np.arange(10)
    cases = {
        "does not exist; point it at DeepMind's": str(tmp_path / "nope.npz"),
        "has no array 'latents_classes'": bad_file(tmp_path / "a.npz", imgs=imgs),
        "imgs is uint8 of shape \\(10, 4096\\)": bad_file(
            tmp_path / "b.npz", imgs=imgs.reshape(10, -1), latents_classes=classes
        ),
        "latents_classes is int64 of shape \\(10, 5\\)": bad_file(
            tmp_path / "c.npz", imgs=imgs, latents_classes=classes[:, 1:]
        ),
        "has 10 images but 9 rows": bad_file(tmp_path / "d.npz", imgs=imgs, latents_classes=classes[:9]),
        "expected binary images": bad_file(tmp_path / "e.npz", imgs=imgs + 255, latents_classes=classes),
        "lists 9 factor combinations more than once": bad_file(
            tmp_path / "f.npz", imgs=imgs, latents_classes=classes * 0
        ),
    }
    (tmp_path / "cut.npz").write_bytes(
        open(bad_file(tmp_path / "g.npz", imgs=imgs, latents_classes=classes), "rb").read()[:300]
    )
    cases["not a readable .npz"] = str(tmp_path / "cut.npz")
    for message, path in cases.items():
        with pytest.raises(UserError, match=message) as error:
            DSpritesDataModule(path=path, image_shape=[1, 64, 64], val_size=1, test_size=1, batch_size=2).prepare()
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="leave none of the 92160 images"):
        small(val_size=50000, test_size=50000).prepare()
    from vaelab.settings import validate

    settings = {"image_shape": [1, 32, 32], "batch_size": 2, "eval_batch_size": 2, "num_levels": 2, "draw": "lazy"}
    with pytest.raises(UserError, match="^data.draw must be per_batch or once, got 'lazy'$"):
        validate(DSpritesDataModule.Settings, settings, "data")  # the data module's schema, checked before it is built
    with pytest.raises(UserError, match=r"must be \[1, S, S\]"):
        small(image_shape=[3, 32, 32])
    with pytest.raises(
        UserError, match="^data.num_positions must be a whole number ≥ 1, got 0; set data.num_positions=<N>$"
    ):
        validate(DSpritesDataModule.Settings, {**settings, "draw": "once", "num_positions": 0}, "data")
    with pytest.raises(UserError, match="train images have shape \\[1, 64, 64\\] but the config says"):
        DSpritesDataModule(
            path=cases["has 10 images but 9 rows"].replace("d.npz", "g.npz"),
            image_shape=[1, 32, 32],
            val_size=1,
            test_size=1,
            batch_size=2,
        ).prepare()
    with pytest.raises(UserError, match="factor indices must lie in 0..size-1"):
        FULL.observations(torch.tensor([[3, 0, 0, 0, 0]]))
    with pytest.raises(UserError, match="int64 tensor \\[n, 5\\]"):
        FULL.observations(torch.zeros(2, 4, dtype=torch.int64))


def test_the_latent_map_takes_factor_labels(tmp_path):
    from vaelab import pictures

    labels = DSpritesFactors(32, 6, 20, 16).sample_factors(200, torch.Generator().manual_seed(0))
    pictures.latent_map(torch.randn(200, 10), labels, tmp_path / "map.png")  # coloured by the shape
    assert (tmp_path / "map.png").stat().st_size > 0


def test_a_training_run_logs_the_disentanglement_of_its_best_model(tmp_path):
    """callbacks=[default,disentanglement]: the scores in test_metrics.json are those of the best
    checkpoint's posterior means, and validation logs them every epoch. "Best" is made the first
    epoch (the lowest val/elbo, mode=min), so scores of the last weights would not pass."""
    import csv
    import json

    from vaelab.building import instantiate_plain
    from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
    from vaelab.config import compose_config
    from vaelab.disentanglement import disentanglement_metrics, mig, posterior_means
    from vaelab.training import train

    overrides = [
        "data=dsprites_small",
        "data.batch_size=64",
        "model=beta_vae",
        "model.beta=4",
        "size.latent_dim=4",
        "callbacks=[default,disentanglement]",
        "callbacks.disentanglement.every_n_epochs=1",
        "callbacks.disentanglement.num_points=200",
        "callbacks.disentanglement.dci_points=50",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=20",
        "trainer.limit_val_batches=5",
        "trainer.limit_test_batches=5",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.mode=min",
    ]
    cfg = compose_config(overrides, tmp_path)
    train(cfg)
    logged = json.loads((tmp_path / "test_metrics.json").read_text())
    best = load_checkpoint(logged["ckpt_path"])
    last = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert (best["epoch"], last["epoch"]) == (0, 1)

    truth = instantiate_plain(cfg.data).ground_truth
    expected = disentanglement_metrics(
        truth,
        posterior_means(model_from_checkpoint(best)),
        seed=0,
        num_train=200,
        num_test=100,
        num_variance_estimate=200,
        num_votes_train=200,
        num_votes_eval=100,
        dci_points=50,
    )
    # The same first 200 points as disentanglement_metrics' MIG: the test can tell best from last.
    of_last = mig(truth, posterior_means(model_from_checkpoint(last)), torch.Generator().manual_seed(0), 200)
    assert expected["mig"] != pytest.approx(of_last.score, abs=1e-6)
    for name, value in expected.items():
        assert logged[f"test/{name}"] == pytest.approx(value, abs=1e-6), name
    rows = [r for r in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if r.get("val/mig")]
    assert len(rows) == 2 and all(0 <= float(r["val/mig"]) <= 1 for r in rows)


def test_the_disentanglement_callback_on_data_without_factors_is_refused_before_training(tmp_path):
    from vaelab.config import compose_config
    from vaelab.training import train

    overrides = ["data=digits", "callbacks=[default,disentanglement]", "trainer.enable_progress_bar=false"]
    with pytest.raises(UserError, match="needs data with ground-truth factors"):
        train(compose_config(overrides, tmp_path))
    assert not (tmp_path / "checkpoints").exists()  # refused before the first epoch
