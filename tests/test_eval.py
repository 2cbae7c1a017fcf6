"""eval.py, the evaluation metrics, pictures and the multirun report."""

import json
import math
import re

import pytest
import torch
import yaml

from conftest import run_cli
from test_variants import exact_log_px, linear_gaussian
from test_vqvae import make_vqvae
from vaelab.config import compose_config
from vaelab.data import Split
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.metrics import ReconstructionQuality, evaluate_split, evaluate_vq_split
from vaelab.models import VAE
from vaelab.pictures import factor_labels, grid, manifold, save_labelled_rows, slerp, traversals, upscale_factor
from vaelab.report import main as report_main
from vaelab.training import train

QUICK = ["trainer.max_epochs=3", "trainer.enable_progress_bar=false", "data=synthetic"]


def reasonable_posterior(model):
    """q = N(0.7 x, 0.5 I): near the true posterior N(0.8 x, 0.2 I) but not it, and wider, as a
    trained encoder's proposal would be."""
    with torch.no_grad():
        linear = model.encoder[1]
        linear.weight.zero_()
        linear.weight[:2].copy_(0.7 * torch.eye(2))
        linear.bias.zero_()
        linear.bias[2:] = math.log(0.5)
    return model


def test_importance_sampled_likelihood_converges_to_the_exact_value():
    torch.manual_seed(0)
    model = reasonable_posterior(linear_gaussian())
    x = torch.randn(400, 1, 1, 2)
    exact = exact_log_px(x)
    errors = {k: (model.iwae_bound(x, k, chunk=250) - exact).abs().mean().item() for k in (1, 100, 5000)}
    assert errors[5000] < errors[100] < errors[1]
    assert errors[5000] < 0.02


def test_chunking_bounds_memory_without_changing_the_estimate():
    torch.manual_seed(0)
    model = reasonable_posterior(linear_gaussian())
    x = torch.randn(300, 1, 1, 2)
    one_chunk = model.iwae_bound(x, 2000, chunk=2000)
    many_chunks = model.iwae_bound(x, 2000, chunk=7)  # 286 chunks folded by a running logsumexp
    # Two independent estimates: they agree on average, and per example up to Monte Carlo error.
    assert abs((one_chunk - many_chunks).mean()) < 0.01
    assert (one_chunk - many_chunks).abs().mean() < 0.05
    assert (one_chunk - exact_log_px(x)).abs().mean() < 0.05


class HalfIgnoringEncoder(torch.nn.Module):
    """Posterior means use the image for latents 0 and 1 only; latents 2 and 3 are constant."""

    def forward(self, x):
        pixels = x.flatten(1)
        mu = torch.stack([pixels[:, :8].sum(1), pixels[:, 8:].sum(1), torch.zeros(len(x)), torch.zeros(len(x))], 1)
        return torch.cat([mu, torch.full_like(mu, -2.0)], 1)


def tiny_vae(latent_dim: int) -> VAE:
    """A Bernoulli VAE of 4x4 images with one hidden layer of 8 units."""
    return VAE(
        [1, 4, 4],
        latent_dim,
        {"kind": "mlp", "hidden_dims": [8], "activation": "tanh"},
        {"name": "bernoulli"},
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    )


def binary_split(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 4, 4, generator=g) < 0.5).to(torch.uint8)
    return Split(images, torch.randint(0, 3, (n,), generator=g), levels=1)


def test_active_units_count_the_latents_the_encoder_uses():
    model = tiny_vae(latent_dim=4)
    model.encoder = HalfIgnoringEncoder()
    results = evaluate_split(model, binary_split(), k=10, chunk=5, batch_size=64)
    assert results["active_units"] == 2
    assert results["unit_activity"][2] == results["unit_activity"][3] == 0.0


def test_evaluation_is_reproducible_and_nll_is_below_negative_elbo():
    torch.manual_seed(0)
    model = tiny_vae(latent_dim=3)
    split = binary_split()
    a = evaluate_split(model, split, k=200, chunk=64, batch_size=50, seed=3)
    b = evaluate_split(model, split, k=200, chunk=64, batch_size=50, seed=3)
    assert a["nll"] == b["nll"] and a["elbo"] == b["elbo"]
    assert a["nll"] <= -a["elbo"]
    assert a["bpd"] == pytest.approx(a["nll"] / (16 * math.log(2)))
    assert a["nll_stderr"] == pytest.approx(a["per_example"]["nll"].std().item() / math.sqrt(200))


def shown(stderr: str, name: str) -> tuple[str, float]:
    """The last state of an evaluation's progress bar: its 'done/total' and the running value."""
    last = [line for line in stderr.replace("\r", "\n").splitlines() if f"{name}=" in line][-1]
    return re.search(r"(\d+/\d+) \[", last).group(1), float(re.search(rf"{name}=(-?[\d.]+)", last).group(1))


def test_evaluation_progress_shows_examples_done_and_the_running_nll_on_stderr(capsys):
    torch.manual_seed(0)
    model = tiny_vae(latent_dim=3)
    split = binary_split(n=120)
    quiet = evaluate_split(model, split, k=20, chunk=10, batch_size=50)
    assert capsys.readouterr().err == ""  # off unless asked for: library callers and tests stay quiet
    results = evaluate_split(model, split, k=20, chunk=10, batch_size=50, progress=True)
    captured = capsys.readouterr()
    assert captured.out == ""
    done, nll = shown(captured.err, "nll")
    assert done == "120/120" and nll == pytest.approx(results["nll"], abs=0.006)
    assert results["nll"] == quiet["nll"]  # the bar draws no random numbers
    vq = evaluate_vq_split(
        make_vqvae(),
        Split(torch.randint(0, 2, (30, 1, 8, 8), dtype=torch.uint8), torch.zeros(30, dtype=torch.long), 1),
        batch_size=16,
        progress=True,
    )
    done, bound = shown(capsys.readouterr().err, "nll_bound")
    assert done == "30/30" and bound == pytest.approx(vq["nll_bound"], abs=0.006)


def test_eval_reproduces_the_test_elbo_logged_in_training(tmp_path, capsys):
    metrics = train(compose_config(QUICK, tmp_path / "run"))
    cfg = compose_config(
        [f"ckpt_path={tmp_path}/run/checkpoints/best.ckpt", "k=500", "chunk=250"], tmp_path / "eval", config_name="eval"
    )
    capsys.readouterr()
    results = evaluate_checkpoint(cfg)
    # eval.yaml turns the progress bar on for the command: the whole split done, and the NLL it ends on.
    done, nll = shown(capsys.readouterr().err, "nll")
    assert done == f"{results['num_examples']}/{results['num_examples']}"
    assert nll == pytest.approx(results["nll"], abs=0.006)
    # The logged test ELBO is a one-sample estimate per example; measure its spread and compare.
    from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
    from vaelab.eval import build_data

    checkpoint = load_checkpoint(cfg.ckpt_path)
    model = model_from_checkpoint(checkpoint).eval()
    split = build_data(checkpoint, cfg, model).fixed_eval_split("test")
    x = split.images.float() / split.levels
    with torch.no_grad():
        one_sample = torch.stack([model.terms(x)["elbo"].mean() for _ in range(50)])
    assert abs(results["elbo"] - metrics["test/elbo"]) < 5 * one_sample.std().item() + 1e-3
    assert results["nll"] <= -results["elbo"]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["nll"] == pytest.approx(results["nll"]) and saved["k"] == 500
    for name in (
        "samples",
        "reconstructions",
        "interpolation_linear",
        "interpolation_spherical",
        "traversals",
        "latent_map",
    ):
        assert (tmp_path / "eval" / "images" / f"{name}.png").is_file()
    # The 8x8 images, 8 to a row, are enlarged 8 times in the training callback's and eval's grids alike.
    from PIL import Image

    for png in (
        "run/images/samples_epoch002.png",
        "run/images/reconstructions_epoch002.png",
        "eval/images/samples.png",
    ):
        assert Image.open(tmp_path / png).size == (8 * (64 + 2) + 2, 8 * (64 + 2) + 2)


def test_eval_bad_inputs(tmp_path):
    def run(*overrides):
        return evaluate_checkpoint(compose_config(list(overrides), tmp_path / "eval", config_name="eval"))

    with pytest.raises(UserError, match="no checkpoint given; run python eval.py ckpt_path=PATH"):
        run()
    with pytest.raises(UserError, match="does not exist"):
        run("ckpt_path=/nonexistent.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(UserError, match="not a (readable|PyTorch) checkpoint"):
        run(f"ckpt_path={tmp_path}/notes.ckpt")
    torch.save({"state_dict": {}, "epoch": 3}, tmp_path / "foreign.ckpt")
    with pytest.raises(UserError, match="is not a vaelab checkpoint"):
        run(f"ckpt_path={tmp_path}/foreign.ckpt")
    train(compose_config(QUICK, tmp_path / "run"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    data = best.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        run(f"ckpt_path={tmp_path}/cut.ckpt")
    with pytest.raises(UserError, match="k must be a whole number ≥ 1"):
        run(f"ckpt_path={best}", "k=0")
    with pytest.raises(UserError, match="split must be test or val"):
        run(f"ckpt_path={best}", "split=train")
    with pytest.raises(UserError, match="disentanglement=true but data synthetic has no ground-truth factors"):
        run(f"ckpt_path={best}", "disentanglement=true")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="device=cuda but no GPU is visible; use device=cpu"):
            run(f"ckpt_path={best}", "device=cuda")
    done = tmp_path / "done"
    evaluate_checkpoint(compose_config([f"ckpt_path={best}", "k=2", "pictures=false"], done, config_name="eval"))
    before = (done / "metrics.json").read_text()
    with pytest.raises(UserError, match="already holds an evaluation"):
        evaluate_checkpoint(compose_config([f"ckpt_path={best}", "k=3"], done, config_name="eval"))
    assert (done / "metrics.json").read_text() == before
    with pytest.raises(
        UserError, match=r"the data has images of shape \[1, 4, 4\] but the checkpoint's model takes \[1, 8, 8\]"
    ):
        run(f"ckpt_path={best}", "data.image_shape=[1,4,4]")


class LitPixel:
    """Ground truth for 8x8 images: one pixel lit at (row, column), and a colour that never changes."""

    def __init__(self):
        self.factor_names, self.factor_sizes = ["colour", "row", "column"], [1, 8, 8]

    def sample_factors(self, n, generator):
        return torch.stack([torch.zeros(n, dtype=torch.long), *torch.randint(8, (2, n), generator=generator)], 1)

    def observations(self, factors):
        images = torch.zeros(len(factors), 1, 8, 8)
        images[torch.arange(len(factors)), 0, factors[:, 1], factors[:, 2]] = 1.0
        return images


def test_eval_scores_disentanglement_when_the_data_has_ground_truth(tmp_path, monkeypatch, capsys):
    import functools

    import vaelab.eval
    from vaelab.disentanglement import disentanglement_metrics, posterior_means

    small = {"num_train": 300, "num_test": 200, "num_variance_estimate": 500, "num_votes_train": 100}
    monkeypatch.setattr(
        vaelab.eval, "disentanglement_metrics", functools.partial(disentanglement_metrics, **small, num_votes_eval=50)
    )
    build_data = vaelab.eval.build_data

    def with_ground_truth(*args):
        datamodule = build_data(*args)
        datamodule.ground_truth = LitPixel()
        return datamodule

    train(compose_config([*QUICK, "trainer.max_epochs=1", "test=false", "size.latent_dim=4"], tmp_path / "run"))
    best = tmp_path / "run" / "checkpoints" / "last.ckpt"
    monkeypatch.setattr(vaelab.eval, "build_data", with_ground_truth)
    overrides = [f"ckpt_path={best}", "k=2", "pictures=false"]
    cfg = compose_config([*overrides, "seed=4", "pictures=true"], tmp_path / "eval", config_name="eval")
    capsys.readouterr()
    metrics = evaluate_checkpoint(cfg)
    printed = capsys.readouterr()
    assert "disentanglement: MIG" in printed.out
    # Every phase shows its progress on stderr, a bar with its count where it has steps, and the
    # summary says how long each took.
    for bar in (r"DCI .*\| 200/200 \[", r"SAP .*\| 4/4 \[", r"FactorVAE \(votes\).*\| \d+/150 \["):
        assert re.search(bar, printed.err), (bar, printed.err[-2000:])
    phases = json.loads((tmp_path / "eval" / "metrics.json").read_text())["phase_seconds"]
    assert {"NLL", "MIG", "pictures"} <= set(phases) and all(seconds >= 0 for seconds in phases.values())
    assert phases["pictures"] > 0 and f"pictures {phases['pictures']:.1f} s" in printed.out
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    from vaelab.checkpoints import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(best))
    expected = disentanglement_metrics(LitPixel(), posterior_means(model), seed=4, **small, num_votes_eval=50)
    assert {key: saved[f"disentanglement/{key}"] for key in expected} == pytest.approx(expected)
    assert saved["disentanglement/factor_names"] == ["colour", "row", "column"]
    information = torch.tensor(saved["disentanglement/mutual_information"])
    assert information.shape == (metrics["latent_dim"], 3) and (information[:, 0] == 0).all()
    assert (tmp_path / "eval" / "images" / "traversals_by_factor.png").is_file()
    off = compose_config([*overrides, "disentanglement=false"], tmp_path / "off", config_name="eval")
    assert not any(key.startswith("disentanglement/") for key in evaluate_checkpoint(off))


def test_psnr_is_the_mean_over_images_of_each_images_psnr():
    """Three 1x2x2 images with squared errors 0.01, 0.0001 and 0.04 in every pixel: PSNRs 20, 40
    and 13.98 dB, mean 24.66 dB. The PSNR of the pooled MSE (0.0167) would be 17.78 dB."""
    x = torch.full((3, 1, 2, 2), 0.5)
    x_hat = x + torch.tensor([0.1, 0.01, 0.2]).view(3, 1, 1, 1)
    quality = ReconstructionQuality((1, 2, 2), "cpu")
    quality.update(x_hat[:2], x[:2])  # two batches: the mean is over images, not batches
    quality.update(x_hat[2:], x[2:])
    per_image = [10 * math.log10(1 / mse) for mse in (0.01, 0.0001, 0.04)]
    assert quality.compute()["psnr"] == pytest.approx(sum(per_image) / 3, abs=1e-3)
    assert quality.compute()["mse"] == pytest.approx((0.01 + 0.0001 + 0.04) / 3, rel=1e-4)


def test_slerp_and_traversals():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    path = slerp(a, b, torch.linspace(0, 1, 4))
    torch.testing.assert_close(path[:, 0], a, atol=1e-5, rtol=0)
    torch.testing.assert_close(path[:, -1], b, atol=1e-5, rtol=0)
    model = linear_gaussian(latent=3)
    model.decoder = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Unflatten(-1, (1, 4, 4)))
    image = traversals(model, torch.zeros(1, 1, 1, 3), kl_per_dim=[0.1, 2.0, 1.0], num_dims=2, steps=5)
    # two rows of 4-pixel images enlarged 16 times to 64 pixels, padding 2
    assert image.shape[0] == 3 and image.shape[1] == 2 * 64 + 3 * 2


@pytest.mark.parametrize(
    "side,scale,width",
    [(8, 8, 8 * (64 + 2) + 2), (28, 3, 8 * (84 + 2) + 2)],  # 530 and 690 pixels for a row of 8
)
def test_grids_enlarge_small_images_into_sharp_blocks(side, scale, width):
    """Images are scaled by the smallest whole number that makes each at least 64 pixels on a side
    (pictures.MIN_SIDE), by nearest neighbour: every original pixel becomes a constant
    scale x scale block, and the grid keeps make_grid's 2-pixel grey padding."""
    images = torch.rand(16, 1, side, side)
    image = grid(images, nrow=8)
    assert upscale_factor(side, side) == scale
    assert image.shape == (3, 2 * (side * scale + 2) + 2, width)  # two rows of 8
    for i in (0, 7, 8, 15):
        y, x = 2 + (i // 8) * (side * scale + 2), 2 + (i % 8) * (side * scale + 2)
        tile = image[0, y : y + side * scale, x : x + side * scale]
        blocks = tile.reshape(side, scale, side, scale)
        assert torch.equal(blocks, images[i, 0][:, None, :, None].expand(side, scale, side, scale))
    assert torch.equal(image[:, :2], torch.full((3, 2, width), 0.5))  # the padding stays 2 pixels
    large = torch.rand(4, 3, 64, 64)
    assert torch.equal(grid(large, nrow=4)[:, 2:66, 2:66], large[0])  # 64 pixels and more: unchanged


def test_manifold_decodes_the_prior_quantiles_in_reading_order():
    # Decoder: z -> a 1x2-pixel image (sigmoid(z1), sigmoid(z2)), so each tile shows its own z.
    model = linear_gaussian(latent=2)
    model.decoder = torch.nn.Sequential(torch.nn.Sigmoid(), torch.nn.Unflatten(-1, (1, 1, 2)))
    steps, pad, scale = 5, 2, upscale_factor(1, 2)  # 1x2-pixel tiles shown 64 times larger
    image = manifold(model, steps=steps)
    quantiles = torch.distributions.Normal(0, 1).icdf((torch.arange(steps) + 0.5) / steps)
    for row in range(steps):
        for col in range(steps):
            y, x = pad + row * (scale + pad), pad + col * (2 * scale + pad)
            # z1 grows to the right, z2 grows upwards (the AEVB paper's figure 4).
            expected = torch.sigmoid(torch.stack([quantiles[col], quantiles[steps - 1 - row]]))
            torch.testing.assert_close(image[0, y, x : x + 2 * scale : scale], expected, atol=1e-6, rtol=0)


def test_a_two_dimensional_latent_gets_its_manifold_picture(tmp_path):
    train(compose_config([*QUICK, "size.latent_dim=2", "test=false"], tmp_path / "run"))
    cfg = compose_config(
        [f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt", "k=10"], tmp_path / "eval", config_name="eval"
    )
    evaluate_checkpoint(cfg)
    assert (tmp_path / "eval" / "images" / "manifold.png").is_file()
    assert not (tmp_path / "run").joinpath("images", "manifold.png").exists()  # eval writes its own folder


def test_report_tables_and_plots_a_sweep(tmp_path):
    for job, beta in enumerate([1, 4, 16]):
        run = tmp_path / "sweep" / str(job)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"model.beta={beta}", "model=beta_vae"]))
        (run / "test_metrics.json").write_text(json.dumps({"test/elbo": -20.0 - beta, "ckpt_path": "x"}))
    report_main([str(tmp_path / "sweep"), "--metric", "test/elbo", "--against", "model.beta"])
    lines = (tmp_path / "sweep" / "report.md").read_text().splitlines()
    assert lines[0] == "| run | model | model.beta | test/elbo |" and len(lines) == 5
    assert "| 16 | -36 |" in lines[4]
    assert (tmp_path / "sweep" / "test_elbo_vs_model.beta.png").stat().st_size > 1000
    with pytest.raises(SystemExit, match="no run has both"):
        report_main([str(tmp_path / "sweep"), "--metric", "test/nll", "--against", "model.beta"])


def test_report_lists_job_folders_in_numeric_order(tmp_path):
    for job in range(12):
        run = tmp_path / "sweep" / str(job)
        run.mkdir(parents=True)
        (run / "test_metrics.json").write_text(json.dumps({"test/elbo": -float(job)}))
    report_main([str(tmp_path / "sweep")])
    rows = (tmp_path / "sweep" / "report.md").read_text().splitlines()[2:]
    assert [row.split(" | ")[0].rsplit("/", 1)[-1] for row in rows] == [str(job) for job in range(12)]


@pytest.mark.slow
def test_eval_cli_prints_the_summary(tmp_path):
    train(compose_config(QUICK, tmp_path / "run"))
    result = run_cli(
        [f"ckpt_path={tmp_path}/run/checkpoints/last.ckpt", "k=20", "pictures=false"], cwd=tmp_path, script="eval.py"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "NLL (k=20)" in result.stdout and "active units" in result.stdout
    assert re.search(r"\| (\d+)/\1 \[.*nll=", result.stderr)  # the progress bar, on by default for the command
    (folder,) = (tmp_path / "outputs" / "eval" / "runs").iterdir()
    assert json.loads((folder / "metrics.json").read_text())["k"] == 20


def test_an_evaluation_composes_with_every_logger(tmp_path):
    """eval.py shares the logger configs of train.py: each must resolve in eval's config too."""
    from omegaconf import OmegaConf

    for logger in ("csv", "tensorboard", "wandb", "none"):
        cfg = compose_config([f"logger={logger}", "ckpt_path=x.ckpt"], tmp_path, config_name="eval")
        if cfg.logger:
            OmegaConf.to_container(cfg.logger, resolve=True)


def test_traversal_rows_are_labelled_with_the_factor_each_latent_tracks(tmp_path):
    import math

    from PIL import Image

    # Latent 0 carries all of pos_x (log 32 nats), latent 2 most of shape, latent 1 nothing.
    # Latent 3 is collapsed (KL 0.001) though its mean follows pos_x.
    information = torch.tensor([[0.0, math.log(32)], [0.01, 0.02], [0.9 * math.log(3), 0.1], [0.0, 2.0]])
    labels = factor_labels([5.0, 0.01, 2.0, 0.001], information, ["shape", "pos_x"], [3, 32], num_dims=4)
    assert labels == [
        "z0  KL 5.00  pos_x (1.00)",
        "z2  KL 2.00  shape (0.90)",
        "z1  KL 0.01  none",
        "z3  KL 0.00  inactive",
    ]
    save_labelled_rows(torch.rand(3, 3 * 66 + 2, 5 * 66 + 2), labels, tmp_path / "rows.png")
    assert Image.open(tmp_path / "rows.png").size[0] > 5 * 66  # the grid and its labels
