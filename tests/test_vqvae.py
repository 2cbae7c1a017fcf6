"""VQ-VAE as a model and its learned prior (the second stage)."""

import math
import shutil

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.models import VQVAE
from vaelab.training import train

QUICK = ["data=synthetic", "trainer.enable_progress_bar=false", "size=small"]
QUANTIZER = dict(
    num_codes=16,
    code_dim=8,
    beta=0.25,
    update="ema",
    decay=0.99,
    epsilon=1e-5,
    kmeans_init=True,
    kmeans_iterations=5,
    restart_dead=True,
    dead_threshold=0.03,
    usage_decay=0.99,
    cosine=False,
    lookup_dim=None,
    seed=0,
)


def make_vqvae(image_shape=(1, 8, 8)):
    return VQVAE(
        list(image_shape),
        {"name": "bernoulli"},
        QUANTIZER,
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        hidden=16,
        res_blocks=1,
    )


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_latent_grid_and_reconstruction_shapes(image_shape):
    model = make_vqvae(image_shape).train()
    x = torch.rand(2, *image_shape)
    z_e = model.encoder(x)
    assert z_e.shape == (2, 8, image_shape[1] // 4, image_shape[2] // 4)  # 7x7 for 28x28, 8x8 for 32x32
    assert model.reconstruct(x).shape == x.shape


@pytest.mark.parametrize("training", [True, False])
def test_reconstruct_neither_syncs_nor_updates_the_codebook(monkeypatch, training):
    """The image callback reconstructs on rank 0 alone: a collective there would hang DDP."""

    def no_collective(t):
        raise AssertionError("reconstruct called a collective")

    monkeypatch.setattr("vaelab.quantizer.all_reduce_sum", no_collective)
    monkeypatch.setattr("vaelab.quantizer.all_gather_rows", no_collective)
    model = make_vqvae().train(training)
    codebook = model.quantizer.codebook.clone()
    x = torch.rand(2, 1, 8, 8)
    z_e = model.encoder(x)
    expected = model.likelihood.mean(
        model.decode(
            model.quantizer.codebook[model.quantizer.nearest(z_e.permute(0, 2, 3, 1).reshape(-1, 8))]
            .view(2, 2, 2, 8)
            .permute(0, 3, 1, 2)
        )
    )
    torch.testing.assert_close(model.reconstruct(x), expected)
    assert torch.equal(model.quantizer.codebook, codebook)


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_loss_is_reconstruction_plus_vq_terms_summed_per_example(update):
    """loss = mean over examples of -log p(x|z_q) + (c + beta) sum over the example's code map
    (2 x 2 positions x 8 dimensions) of (z_e - e)^2, with c = 1 for update=loss's codebook term
    and 0 for ema; recomputed here with loops over examples, positions and codes."""
    torch.manual_seed(0)
    model = VQVAE(
        [1, 8, 8],
        {"name": "bernoulli"},
        {**QUANTIZER, "update": update, "kmeans_init": False},
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
        hidden=16,
        res_blocks=1,
    ).eval()
    x = torch.bernoulli(torch.full((6, 1, 8, 8), 0.4))
    loss, metrics = model.step_metrics(x)
    codebook, beta = model.quantizer.codebook.detach(), QUANTIZER["beta"]
    with torch.no_grad():
        z_e = model.encoder(x)
        z_q = torch.zeros_like(z_e)
        vq = []
        for i in range(6):
            squared = 0.0
            for h in range(2):
                for w in range(2):
                    distances = [((z_e[i, :, h, w] - code) ** 2).sum().item() for code in codebook]
                    k = distances.index(min(distances))
                    z_q[i, :, h, w] = codebook[k]
                    squared += distances[k]
            vq.append(((1.0 if update == "loss" else 0.0) + beta) * squared)
        logits = model.decode(z_q)
        log_px = (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum((1, 2, 3))
    recon = [-value for value in log_px.tolist()]
    assert metrics["recon"].item() == pytest.approx(sum(recon) / 6, rel=1e-5)
    assert metrics["vq"].item() == pytest.approx(sum(vq) / 6, rel=1e-5)
    assert loss.item() == pytest.approx(sum(r + v for r, v in zip(recon, vq)) / 6, rel=1e-5)
    derived = model.with_derived(metrics)
    assert derived["kl"].item() == pytest.approx(4 * math.log(16))  # uniform prior over 16 codes at 2x2 positions
    assert derived["elbo"].item() == pytest.approx(-(sum(recon) / 6 + 4 * math.log(16)), rel=1e-5)


def test_a_restarted_code_starts_with_fresh_adam_moments():
    """update=loss: a code restarted in a step's forward is stepped as if Adam had never seen it,
    so after the step its moments are exp_avg = (1 - beta1) g and exp_avg_sq = (1 - beta2) g^2
    (g its gradient row), not beta1 m_old + (1 - beta1) g carrying the replaced vector's momentum."""
    torch.manual_seed(0)
    model = VQVAE(
        [1, 8, 8],
        {"name": "bernoulli"},
        {**QUANTIZER, "update": "loss", "dead_threshold": 0.5},
        {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-2, "betas": (0.8, 0.9)},
        hidden=16,
        res_blocks=1,
    )
    codebook = model.quantizer.codebook
    seen = {}

    class ForceRestart(L.Callback):
        """Before the third step, marks dead the code with the most momentum (the other codes'
        usage stays near 1, far above the threshold); after it, reads that code's Adam state."""

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 2:
                momentum = trainer.optimizers[0].state[codebook]["exp_avg"].norm(dim=1)
                seen["code"] = code = int(momentum.argmax())
                assert momentum[code] > 0
                pl_module.quantizer.usage[code] = 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 2:
                state, code = trainer.optimizers[0].state[codebook], seen["code"]
                seen.update(
                    usage=pl_module.quantizer.usage[code].item(),
                    grad=codebook.grad[code].clone(),
                    exp_avg=state["exp_avg"][code].clone(),
                    exp_avg_sq=state["exp_avg_sq"][code].clone(),
                )

    x = torch.bernoulli(torch.full((24, 1, 8, 8), 0.4))
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ForceRestart()],
    )
    trainer.fit(model, DataLoader(TensorDataset(x, torch.zeros(24)), batch_size=8))
    assert seen["usage"] == 1.0  # restarted in the third step
    torch.testing.assert_close(seen["exp_avg"], (1 - 0.8) * seen["grad"])
    torch.testing.assert_close(seen["exp_avg_sq"], (1 - 0.9) * seen["grad"] ** 2)
    assert model.quantizer.restarted.tolist() == [seen["code"]]


def test_vqvae_and_its_prior_train_and_the_prior_checkpoint_stands_alone(tmp_path):
    vq_metrics = train(compose_config([*QUICK, "model=vqvae", "trainer.max_epochs=2"], tmp_path / "vq"))
    assert 0 < vq_metrics["test/codes_used"] <= 1 and vq_metrics["test/perplexity"] >= 1
    assert (tmp_path / "vq" / "images" / "codebook_usage_epoch001.png").is_file()
    vq_ckpt = tmp_path / "vq" / "checkpoints" / "best.ckpt"
    prior_metrics = train(
        compose_config(
            [
                "model=vqvae_prior",
                f"prior.vqvae_ckpt={vq_ckpt}",
                "trainer.max_epochs=2",
                "trainer.enable_progress_bar=false",
            ],
            tmp_path / "prior",
        )
    )
    # The whole model's bound: reconstruction plus the prior's NLL of the codes.
    assert prior_metrics["test/elbo"] == pytest.approx(
        -(prior_metrics["test/recon"] + prior_metrics["test/prior_nll"]), rel=1e-5
    )
    assert prior_metrics["test/prior_nll"] < 4 * math.log(512)  # better than uniform codes (2x2 of K = 512)
    assert (tmp_path / "prior" / "images" / "samples_epoch001.png").is_file()
    # Without the VQ-VAE's file, the prior's checkpoint still rebuilds the whole model.
    from vaelab.eval import evaluate_checkpoint

    vq_eval = evaluate_checkpoint(compose_config([f"ckpt_path={vq_ckpt}"], tmp_path / "vq_eval", config_name="eval"))
    prior_eval = evaluate_checkpoint(
        compose_config(
            [f"ckpt_path={tmp_path}/prior/checkpoints/best.ckpt"], tmp_path / "prior_eval", config_name="eval"
        )
    )
    assert vq_eval["prior"] == "uniform" and prior_eval["prior"] == "learned"
    assert prior_eval["recon"] == pytest.approx(vq_eval["recon"], rel=1e-5)  # the VQ-VAE stayed frozen
    trained = load_checkpoint(str(tmp_path / "prior" / "checkpoints" / "best.ckpt"))["state_dict"]
    original = load_checkpoint(str(vq_ckpt))["state_dict"]
    for name, value in original.items():
        assert torch.equal(trained[f"vqvae.{name}"], value), name
    assert prior_eval["nll_bound"] < vq_eval["nll_bound"]  # the learned prior beats uniform codes
    assert prior_eval["nll_bound"] == pytest.approx(prior_metrics["test/elbo"] * -1, rel=1e-4)
    for name in ("samples", "reconstructions", "codebook_usage"):
        assert (tmp_path / "prior_eval" / "images" / f"{name}.png").is_file()
    shutil.rmtree(tmp_path / "vq")
    model = model_from_checkpoint(load_checkpoint(str(tmp_path / "prior" / "checkpoints" / "best.ckpt"))).eval()
    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1


def test_prior_needs_a_vqvae_checkpoint(tmp_path):
    with pytest.raises(UserError, match="model=vqvae_prior needs prior.vqvae_ckpt"):
        train(compose_config(["model=vqvae_prior"], tmp_path / "a"))
    train(compose_config([*QUICK, "trainer.max_epochs=1"], tmp_path / "vae"))
    with pytest.raises(UserError, match="is a VAE checkpoint, not a VQ-VAE; train one with model=vqvae first"):
        train(
            compose_config(
                ["model=vqvae_prior", f"prior.vqvae_ckpt={tmp_path}/vae/checkpoints/last.ckpt"], tmp_path / "b"
            )
        )


@pytest.mark.slow
def test_the_prior_keeps_the_users_loader_settings_and_refuses_another_data_set(tmp_path, monkeypatch):
    """The prior trains on its VQ-VAE's data set; how the batches are made is the user's."""
    import yaml

    from conftest import run_cli

    train(compose_config([*QUICK, "model=vqvae", "trainer.max_epochs=1", "size=small", "test=false"], tmp_path / "vq"))
    vq_ckpt = tmp_path / "vq" / "checkpoints" / "last.ckpt"
    run = tmp_path / "prior"
    args = [
        "model=vqvae_prior",
        f"prior.vqvae_ckpt={vq_ckpt}",
        "trainer.max_epochs=1",
        "trainer.limit_val_batches=1",
        "test=false",
        "trainer.enable_progress_bar=false",
    ]
    result = run_cli([*args, "data.batch_size=7", "seed=3", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    used = yaml.safe_load((run / "config.yaml").read_text())["data"]
    assert used["batch_size"] == 7 and used["seed"] == 3 and used["_target_"].endswith("SyntheticDataModule")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 512 // 7
    from test_refusals import typed_on_the_command_line

    with pytest.raises(UserError) as refused:  # as python train.py *args data=digits (its one line: test_refusals)
        train(compose_config(typed_on_the_command_line(monkeypatch, [*args, "data=digits"]), tmp_path / "other"))
    monkeypatch.undo()
    assert str(refused.value) == (
        "model=vqvae_prior trains on the data set of its VQ-VAE (synthetic); "
        "drop data=digits (data.batch_size, data.eval_batch_size, data.num_workers, "
        "data.pin_memory, data.on_device and data.overfit_batches can be set)"
    )
    # seed=null: the drawn seed is the prior's data seed too.
    # (Without QUICK's size=small: the prior takes its sizes from its VQ-VAE, so a size is refused.)
    quick = [o for o in QUICK if not o.startswith("size=")]
    train(compose_config([*quick, *args[:3], "test=false", "seed=null"], tmp_path / "null_seed"))
    saved = yaml.safe_load((tmp_path / "null_seed" / "config.yaml").read_text())
    assert isinstance(saved["seed"], int) and saved["data"]["seed"] == saved["seed"]
