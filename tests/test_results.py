"""The trained models shipped under results/<experiment>/ (README, "Reproduced results"), and the
weights-only export that writes them."""

from pathlib import Path

import pytest
import torch

from vaelab.building import instantiate_model
from vaelab.checkpoints import check_resume_checkpoint, export_weights, load_checkpoint, model_from_checkpoint
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.training import train

RESULTS = Path(__file__).resolve().parents[1] / "results"
# The README's "Reproduced results" rows, each an experiment= config with its weights.
SHIPPED = [
    "reproduce_mnist_vae",
    "reproduce_mnist_iwae_k5",
    "reproduce_fashion_vae",
    "reproduce_mnist_vae_250",
    "reproduce_mnist_vamp",
    "reproduce_mnist_iwae_2layer_k5",
]
# What makes two runs the same model: the settings of the model and of its data.
MODEL_KEYS = (
    *("_target_", "latent_dim", "net", "likelihood", "posterior", "prior", "top_latents", "beta", "k", "image_shape"),
)
STANDARD_PRIOR = {"_target_": "vaelab.priors.StandardNormalPrior"}  # of models shipped before the prior group
# (and before the second stochastic layer: top_latents 0)


@pytest.mark.parametrize("experiment", SHIPPED)
def test_a_shipped_model_is_its_experiments_model_with_weights_only(experiment, tmp_path):
    path = RESULTS / experiment / "model.ckpt"
    assert path.is_file(), f"{path} is missing: train the experiment and export its best.ckpt"
    assert path.stat().st_size < 8 * 2**20  # weights only: a few MB
    checkpoint = load_checkpoint(str(path))
    assert "optimizer_states" not in checkpoint and checkpoint["vaelab"]["weights_only"]
    shipped = checkpoint["vaelab"]["config"]
    # The experiment's config today builds the same model, with the same data, as the shipped one.
    data_path = [f"data.path={shipped['data']['path']}"] if shipped["data"].get("path") else []
    cfg = compose_config([f"experiment={experiment}", *data_path], tmp_path)
    for key in MODEL_KEYS:
        if key in cfg.model:
            value = shipped["model"].get(key, {"prior": STANDARD_PRIOR, "top_latents": 0}.get(key))
            assert value == cfg.model[key] or str(value) == str(cfg.model[key]), key
    assert shipped["data"]["_target_"] == cfg.data._target_
    model = model_from_checkpoint(checkpoint).eval()
    fresh = instantiate_model(cfg.model).state_dict()
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in fresh.items()}
    # Trained, not initial, weights: the decoder turns the prior's mean into an image with strokes.
    with torch.no_grad():
        image = model.sample(16, torch.Generator().manual_seed(0))
    assert image.shape[1:] == tuple(cfg.data.image_shape)
    assert image.std() > 0.1 and torch.isfinite(image).all()


def test_exported_weights_evaluate_like_the_checkpoint_and_do_not_resume(tmp_path):
    quick = ["data=digits", "trainer.enable_progress_bar=false", "trainer.max_epochs=2"]
    train(compose_config(quick, tmp_path / "run"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    out = tmp_path / "shipped" / "model.ckpt"
    export_weights(str(best), str(out))
    assert out.stat().st_size < 0.5 * best.stat().st_size  # Adam's two moments are gone
    results = {}
    for name, path in (("checkpoint", best), ("export", out)):
        cfg = compose_config(
            [f"ckpt_path={path}", "k=50", "pictures=false", "progress=false"], tmp_path / name, config_name="eval"
        )
        results[name] = evaluate_checkpoint(cfg)
    assert results["export"]["nll"] == results["checkpoint"]["nll"]
    from vaelab.models import VAE

    loaded = VAE.load_from_checkpoint(out)  # Lightning's own loader reads it too
    assert torch.equal(
        loaded.decoder.net[0].weight, model_from_checkpoint(load_checkpoint(str(best))).decoder.net[0].weight
    )
    assert results["export"]["elbo"] == results["checkpoint"]["elbo"]
    with pytest.raises(UserError, match="weights only"):
        check_resume_checkpoint(str(out), dict(compose_config(quick, tmp_path / "again")))
    with pytest.raises(UserError, match="exists"):
        export_weights(str(best), str(out))  # nothing is overwritten
