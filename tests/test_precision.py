"""Mixed precision and torch.compile."""

import csv

import pytest
import torch
import torch._inductor.config
from torch._dynamo.utils import counters

from vaelab.building import build_model
from vaelab.config import compose_config
from vaelab.models import VAE
from vaelab.quantizer import VectorQuantizer
from vaelab.training import train

QUICK = ["data=synthetic", "trainer.enable_progress_bar=false", "trainer.max_epochs=1"]


def test_log_densities_and_kl_stay_float32_under_bf16_autocast():
    model = VAE(
        [1, 8, 8],
        4,
        {"kind": "conv", "channels": [8, 16], "activation": "relu"},
        {"name": "bernoulli"},
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
    )
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.encoder(x).dtype == torch.bfloat16  # the networks do run in bf16
        terms = model.terms(x)
    for name in ("log_px_given_z", "kl", "elbo"):
        assert terms[name].dtype == torch.float32, name


def test_vq_distances_are_float32_under_bf16_autocast():
    vq = VectorQuantizer(num_codes=8, code_dim=4, kmeans_init=False).eval()
    z_e = torch.randn(2, 4, 2, 2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z_q, out = vq(z_e)
    assert out["commitment"].dtype == torch.float32 and z_q.dtype == torch.bfloat16
    assert torch.equal(out["indices"], vq.indices(z_e.float()))  # the same codes as in float32


@pytest.mark.parametrize("model", ["vae", "vqvae"])
def test_bf16_mixed_training_runs_and_logs_float32_metrics(tmp_path, model):
    metrics = train(compose_config([*QUICK, f"model={model}", "size=small", "trainer.precision=bf16-mixed"], tmp_path))
    assert all(v == v for v in metrics.values())
    kl = metrics["test/kl"]
    assert isinstance(kl, float) and kl > 0


@pytest.mark.slow
def test_the_compiled_step_is_the_eager_step_and_a_changing_beta_does_not_recompile_it(tmp_path):
    # The compiled graph draws the same random numbers as eager code, so the runs can be compared;
    # past the recompile limit torch.compile gives up and runs eagerly, which would hide one graph
    # per beta. (config.patch, not monkeypatch: undoing a monkeypatch deletes these settings.)
    with torch._inductor.config.patch(fallback_random=True), torch._dynamo.config.patch(recompile_limit=64):
        compiled_then_eager(tmp_path)


def compiled_then_eager(tmp_path):
    overrides = [
        "data=digits",
        "trainer.enable_progress_bar=false",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=5",
        "model=beta_vae",
        "model.beta=1.0",
        "kl_schedule=linear",
        "kl_schedule.warmup_steps=40",  # beta takes a new value at each of the first 40 steps
        "model.test_k=20",  # the importance-sampling chunks run compiled too
    ]
    compiled_cfg = compose_config([*overrides, "model.compile=true"], tmp_path / "compiled")
    model = build_model(compiled_cfg)
    for method in ("step_metrics", "importance_chunk"):
        assert hasattr(getattr(model, method), "_torchdynamo_orig_callable"), method  # the whole step, compiled
    torch._dynamo.reset()
    counters.clear()
    compiled = train(compiled_cfg)
    graphs = counters["stats"]["unique_graphs"]
    eager = train(compose_config([*overrides, "model.compile=false"], tmp_path / "eager"))
    assert compiled.keys() == eager.keys()
    for name, value in eager.items():
        assert compiled[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    rows = list(csv.DictReader(open(tmp_path / "compiled" / "csv" / "metrics.csv")))
    betas = [float(r["train/beta"]) for r in rows if r.get("train/beta")]
    assert betas[0] < 0.2 and betas[-1] == 1.0  # the warm-up ran in the compiled step
    # Train and eval modes, a shorter last batch, the graph around the schedule: a handful of
    # graphs, not one per value of beta.
    assert 1 <= graphs <= 16, graphs


@pytest.mark.slow
def test_a_compiled_run_ends_where_the_eager_run_with_its_seed_does(tmp_path):
    """model.compile=true changes a run's speed, not its numbers: compiled as a user runs it, with
    no inductor setting patched here, a whole run (two epochs, the best checkpoint chosen by its
    validation bound, then tested) ends with the eager run's metrics and validation curve, to
    float rounding. Inductor's own random-number kernels would draw other reparameterization
    noise from the same seed and end elsewhere (test ELBO -29.63 against -29.34 after the default
    run's first epoch)."""
    assert not torch._inductor.config.fallback_random  # inductor's default: the run must ask for eager's draws
    overrides = [
        "data=digits",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=8",
        "trainer.limit_val_batches=2",
        "trainer.limit_test_batches=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    torch._dynamo.reset()
    counters.clear()
    compiled = train(compose_config([*overrides, "model.compile=true"], tmp_path / "compiled"))
    assert counters["stats"]["unique_graphs"] >= 1  # it did run compiled
    eager = train(compose_config([*overrides, "model.compile=false"], tmp_path / "eager"))
    assert compiled.keys() == eager.keys() and "test/elbo" in eager
    for name, value in eager.items():
        assert compiled[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
    rows = {run: list(csv.DictReader(open(tmp_path / run / "csv" / "metrics.csv"))) for run in ("compiled", "eager")}
    curves = [[float(r["val/elbo"]) for r in rows[run] if r.get("val/elbo")] for run in ("compiled", "eager")]
    assert len(curves[1]) == 2 and curves[0] == pytest.approx(curves[1], rel=1e-4)
    # The compiled run's checkpoints are the eager model's: they load into an uncompiled VAE.
    checkpoint = torch.load(tmp_path / "compiled" / "checkpoints" / "last.ckpt", weights_only=False)
    assert not any("_orig_mod" in key for key in checkpoint["state_dict"])
    VAE(**checkpoint["hyper_parameters"]).load_state_dict(checkpoint["state_dict"])  # strict: every key matches


@pytest.mark.parametrize("has_units", [False, True])
def test_bf16_on_a_cpu_without_bf16_units_warns_once_before_training(has_units, tmp_path, monkeypatch, recwarn):
    import vaelab.building as building

    monkeypatch.setattr(building, "cpu_has_bf16_matrix_units", lambda: has_units)
    overrides = [
        *QUICK,
        "trainer.accelerator=cpu",
        "trainer.precision=bf16-mixed",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "test=false",
    ]
    train(compose_config(overrides, tmp_path))
    slow = [w for w in recwarn if "without bf16 units" in str(w.message)]
    assert len(slow) == (0 if has_units else 1)
    if slow:
        assert "trainer.precision=bf16-mixed" in str(slow[0].message) and "\n" not in str(slow[0].message)


def test_the_bf16_unit_detector_reads_the_cpu_flags(monkeypatch, tmp_path):
    import vaelab.building as building

    flags = {"amd": "flags : fpu sse avx2 avx512f", "sapphire": "flags : avx512f avx512_bf16 amx_bf16 amx_tile"}
    for name, line in flags.items():
        (tmp_path / name).write_text(line + "\n")
    real_path = building.Path
    monkeypatch.setattr(
        building, "Path", lambda p: real_path(tmp_path / "amd") if p == "/proc/cpuinfo" else real_path(p)
    )
    assert not building.cpu_has_bf16_matrix_units()
    monkeypatch.setattr(
        building, "Path", lambda p: real_path(tmp_path / "sapphire") if p == "/proc/cpuinfo" else real_path(p)
    )
    assert building.cpu_has_bf16_matrix_units()


@pytest.mark.parametrize(
    "model_name,extra",
    [("iwae", {"k": 5, "dreg": True}), ("beta_tcvae", {"beta": 6.0, "sampling": "mss", "dataset_size": 1000})],
)
def test_compiled_step_of_other_objectives_gives_the_eager_loss_and_gradients(model_name, extra):
    """model.compile=true compiles each VAE-family model's whole step (its objective included): for
    IWAE with DReG gradients (the stop-gradient surrogate) and the β-TCVAE's B x B x L estimate of
    log q(z), the compiled step's loss, logged means and every parameter's gradient are the eager
    step's on the same batch and random numbers."""
    from vaelab.models import IWAE, BetaTCVAE

    cls = {"iwae": IWAE, "beta_tcvae": BetaTCVAE}[model_name]
    net = {"kind": "mlp", "hidden_dims": [32], "activation": "tanh"}
    adam = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}

    def step(compiled: bool):
        torch.manual_seed(0)
        model = cls([1, 8, 8], 4, net, {"name": "bernoulli"}, adam, **extra)
        if compiled:
            model.compile_computation()
            assert hasattr(model.step_metrics, "_torchdynamo_orig_callable")
        x = torch.bernoulli(torch.full((32, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(1))
        torch.manual_seed(2)
        loss, metrics = model.step_metrics(x)
        loss.backward()
        return loss.detach(), metrics, {n: p.grad for n, p in model.named_parameters()}

    torch._dynamo.reset()
    counters.clear()
    eager_loss, eager_metrics, eager_grads = step(compiled=False)
    with torch._inductor.config.patch(fallback_random=True):  # the eager step's random draws
        loss, metrics, grads = step(compiled=True)
    assert counters["stats"]["unique_graphs"] >= 1  # it did run compiled
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    assert metrics.keys() == eager_metrics.keys()
    for name, value in eager_metrics.items():
        torch.testing.assert_close(metrics[name], value, rtol=1e-5, atol=1e-5, msg=name)
    for name, grad in eager_grads.items():
        assert grad is not None and grad.abs().sum() > 0, name  # every parameter is trained
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
