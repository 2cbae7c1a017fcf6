"""The README's recipe for a new variant, followed by a user: one class and one YAML in a folder
of their own (tests/example_variant), nothing in vaelab touched, trained with `python train.py`."""

import csv
import os
import subprocess
import sys

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow

EXAMPLE = ROOT / "tests" / "example_variant"
LATENT_DIM = 50  # size=base


def run_variant(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`python train.py` with the variant's module on PYTHONPATH and its configs on Hydra's search path."""
    pythonpath = os.pathsep.join(p for p in (str(EXAMPLE), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(ROOT / "train.py"), f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]"]
    return subprocess.run([*command, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_the_example_variant_trains_with_its_own_objective(tmp_path):
    free_bits = 3.0  # nats per dimension: above every dimension's KL, so the floor is the whole KL term
    result = run_variant(
        [
            "model=free_bits_vae",
            f"model.free_bits={free_bits}",
            "trainer.max_epochs=2",
            "trainer.limit_train_batches=20",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks=none",
            "test=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    val = [row for row in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if row.get("val/elbo")]
    assert len(val) == 2
    for row in val:
        floored, kl = float(row["val/kl_floored"]), float(row["val/kl"])
        # The loss's KL term is the floor, not the true KL (a plain VAE's loss is recon + kl).
        assert floored == pytest.approx(LATENT_DIM * free_bits), row
        assert kl < floored, row
        assert float(row["val/loss"]) == pytest.approx(float(row["val/recon"]) + floored, rel=1e-5), row
        assert float(row["val/elbo"]) == pytest.approx(-(float(row["val/recon"]) + kl), rel=1e-5), row
    assert float(val[1]["val/elbo"]) > float(val[0]["val/elbo"]), val  # and it learns


def test_the_example_variants_own_check_refuses_a_bad_value_before_training(tmp_path):
    result = run_variant(["model=free_bits_vae", "model.free_bits=-1", f"hydra.run.dir={tmp_path}"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        "error: model.free_bits must be ≥ 0 nats per latent dimension, got -1; set model.free_bits=<λ>"
    )
    assert not (tmp_path / "csv").exists() and not (tmp_path / "checkpoints").exists()  # nothing was trained


def test_the_second_example_variants_bound_sits_between_the_elbo_and_the_iwae_bound():
    """The VR bound of tests/example_variant/renyi_vae.py against its known limits (Li & Turner
    2016, theorem 1 and eq. 9): alpha = 0 is the IWAE bound, alpha = 1 the mean log-weight (the
    ELBO), and the bound does not increase with alpha."""
    import torch

    sys.path.insert(0, str(EXAMPLE))
    from renyi_vae import renyi_bound

    from vaelab.objectives import iwae_bound

    log_w = torch.randn(7, 50, generator=torch.Generator().manual_seed(0)) * 3 - 90
    torch.testing.assert_close(renyi_bound(log_w, 0.0), iwae_bound(log_w))
    torch.testing.assert_close(renyi_bound(log_w, 1.0), log_w.mean(0))
    # Near alpha = 1 the bound tends to the mean log-weight: (1 - alpha) / 2 * Var(log w) apart (float64:
    # in float32 the division by 1 - alpha amplifies rounding).
    near = renyi_bound(log_w.double(), 0.999) - log_w.double().mean(0)
    torch.testing.assert_close(near, 0.0005 * log_w.double().var(0, correction=0), rtol=0.05, atol=1e-4)
    bounds = torch.stack([renyi_bound(log_w, a) for a in (0.0, 0.25, 0.5, 0.75, 1.0)])
    assert (bounds[1:] <= bounds[:-1] + 1e-4).all()
    # alpha = 0.5 by brute force: 2 log (1/k) sum_k sqrt(w_k), in float64.
    brute = 2 * torch.log(torch.exp(0.5 * log_w.double() + 45).mean(0)) - 90
    torch.testing.assert_close(renyi_bound(log_w, 0.5).double(), brute, rtol=1e-6, atol=1e-4)


def test_the_second_example_variant_trains_on_its_bound(tmp_path):
    result = run_variant(
        [
            "model=renyi_vae",
            "model.alpha=0.5",
            "model.k=5",
            "trainer.max_epochs=3",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "callbacks=none",
            "test=false",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    val = [row for row in csv.DictReader(open(tmp_path / "csv" / "metrics.csv")) if row.get("val/elbo")]
    assert len(val) == 3
    for row in val:
        # The loss is the VR bound's negative; with 5 samples and alpha < 1 it lies above the ELBO.
        assert float(row["val/loss"]) == pytest.approx(-float(row["val/vr_bound"]), rel=1e-5), row
        assert float(row["val/vr_bound"]) > float(row["val/elbo"]), row
    assert float(val[-1]["val/vr_bound"]) > float(val[0]["val/vr_bound"]) + 1, val  # it learns


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.beta=4", "model.beta has no effect on model=renyi_vae, whose bound weighs no KL; drop it"),
        # The base class's refusals (reparameterized_only) name the model by its config file where
        # Hydra runs the app, by its class here (composed outside it, the example's folder unknown).
        ("model.estimator=score_function", "model=RenyiVAE trains with reparameterized gradients; set model.estimator"),
        ("model.baseline_decay=0.5", "model.baseline_decay has no effect on model=RenyiVAE, which trains with"),
    ],
)
def test_the_second_example_variant_refuses_the_inherited_settings_it_does_not_use(
    override, message, tmp_path, monkeypatch
):
    from vaelab.config import compose_config
    from vaelab.errors import UserError
    from vaelab.training import train

    monkeypatch.syspath_prepend(str(EXAMPLE))
    cfg = compose_config([f"hydra.searchpath=[file://{EXAMPLE / 'conf'}]", "model=renyi_vae", override], tmp_path)
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()
