"""Settings that cannot change a run are refused before anything is built, as are callbacks that
cannot apply to the model; and every shipped option still passes the checks. (The refusals of
single values are rows of test_config's BAD_VALUES; here are those that need more than a row.)"""

import pytest
import torch

import vaelab.app
import vaelab.config
import vaelab.training
from conftest import run_cli
from test_config import LATENT_MODELS, OPTIONS, data_overrides
from vaelab.config import check_config, compose_config, use_vqvae_data
from vaelab.errors import UserError
from vaelab.training import train


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_shipped_option_passes_the_checks(group, option, tmp_path, data_files):
    """No refusal of a setting without effect may hit a config that the files themselves make."""
    if (group, option) == ("trainer", "gpu") and not torch.cuda.is_available():
        pytest.skip("refused without a GPU, as it should be")
    overrides = [f"{group}={option}", *data_overrides(group, option, data_files)]
    if (group, option) == ("callbacks", "disentanglement"):
        overrides.append("data=dsprites_small")  # it needs data with ground-truth factors
    cfg = compose_config(overrides, tmp_path)
    if (group, option) == ("model", "vqvae_prior"):
        cfg.prior.vqvae_ckpt = str(data_files["binarized_mnist"])  # any file: the checks look for one
    check_config(cfg)


def typed_on_the_command_line(monkeypatch, overrides):
    """As if `python train.py *overrides` had been run (a Hydra app knows its overrides)."""
    monkeypatch.setattr(vaelab.app, "command_line_overrides", lambda: list(overrides))
    return overrides


@pytest.mark.parametrize(
    "overrides,message",
    [
        # 64 is size=small's own value, so only the command line tells that the user set it.
        (["size.vq_hidden=64"], "size.vq_hidden=64 has no effect on model=vae: only model=vqvae reads size.vq_hidden"),
        # 4 is model=beta_vae's own beta: given all the same, and capacity control does not read it.
        (
            ["model=beta_vae", "kl_schedule=capacity", "model.beta=4"],
            "model.beta has no effect with kl_schedule=capacity, whose KL weight is kl_schedule.gamma",
        ),
        (
            ["model=beta_vae", "kl_schedule=linear", "kl_schedule.warmup_steps=100", "kl_schedule.warmup_epochs=10"],
            "kl_schedule.warmup_epochs has no effect when kl_schedule.warmup_steps is set",
        ),
        (
            ["model=vqvae", "model.quantizer.update=loss", "model.quantizer.decay=0.99"],
            "model.quantizer.decay has no effect with model.quantizer.update=loss",
        ),
    ],
)
def test_a_value_typed_on_the_command_line_is_refused_even_when_the_files_give_it(
    overrides, message, tmp_path, monkeypatch
):
    cfg = compose_config(typed_on_the_command_line(monkeypatch, overrides), tmp_path)
    with pytest.raises(UserError, match=message):
        check_config(cfg)


def test_the_files_own_values_and_the_defaults_pass(tmp_path, monkeypatch):
    """The same settings, left to the config files, are no user's."""
    for overrides in (
        ["model=beta_vae", "kl_schedule=capacity"],
        ["model=beta_vae", "kl_schedule=linear", "kl_schedule.warmup_steps=100"],
        ["model=vqvae", "model.quantizer.update=loss"],
        ["model=vqvae", "size=small"],
        ["model=iwae", "model.beta=1"],
    ):
        check_config(compose_config(typed_on_the_command_line(monkeypatch, overrides), tmp_path))


def fake_vqvae_checkpoint(path, data):
    """What use_vqvae_data reads of a VQ-VAE checkpoint: its class and its run's data."""
    config = {"model": {"_target_": "vaelab.models.VQVAE"}, "data": data}
    torch.save({"vaelab": {"config": config}, "state_dict": {}, "hyper_parameters": {}}, path)
    return path


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["likelihood=gaussian"],
            f"likelihood=gaussian has no effect on model=vqvae_prior: only model={LATENT_MODELS}, "
            "vae and vqvae read likelihood",
        ),
        (["net=conv"], "net=conv has no effect on model=vqvae_prior"),
        (["size=large"], "size=large has no effect on model=vqvae_prior"),
        (["kl_schedule=linear"], "kl_schedule=linear has no effect on model=vqvae_prior"),
    ],
)
def test_the_prior_stage_refuses_the_groups_of_its_vqvae(overrides, message, tmp_path):
    """The prior decodes with its VQ-VAE's likelihood and networks; the run's groups reach nothing."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(compose_config([], tmp_path).data, resolve=True)
    ckpt = fake_vqvae_checkpoint(tmp_path / "vqvae.ckpt", data)
    cfg = compose_config(["model=vqvae_prior", f"prior.vqvae_ckpt={ckpt}", *overrides], tmp_path / "run")
    use_vqvae_data(cfg)
    with pytest.raises(UserError, match=message):
        check_config(cfg)
    plain = compose_config(["model=vqvae_prior", f"prior.vqvae_ckpt={ckpt}"], tmp_path / "run")
    use_vqvae_data(plain)
    check_config(plain)  # the groups left at their defaults


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["model=vqvae", "callbacks.encoder_gradient_variance.num_draws=5"],
            "callbacks.encoder_gradient_variance measures the encoder gradient of a model with q(z|x)",
        ),
        (
            ["model=vqvae", "callbacks=[default,disentanglement]", "data=dsprites_small"],
            "callbacks=[...,disentanglement] scores the posterior means, and this model has no q(z|x)",
        ),
        (["callbacks=[default,disentanglement]"], "callbacks=[...,disentanglement] needs data with ground-truth"),
    ],
)
def test_a_callback_that_cannot_apply_is_refused_before_anything_is_built(overrides, message, tmp_path, monkeypatch):
    def no_trainer(cfg):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(vaelab.training, "build_trainer", no_trainer)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        train(compose_config(overrides, tmp_path))
    assert not (tmp_path / "config.yaml").exists()


def test_the_gradient_variance_callback_refuses_a_model_without_a_posterior_when_it_starts():
    """Built by hand (not from a config), the callback still refuses before the first epoch."""
    from vaelab.callbacks import EncoderGradientVariance
    from vaelab.models import VQVAE

    model = VQVAE([1, 8, 8], {"name": "bernoulli"}, {"num_codes": 4, "code_dim": 2}, {"_target_": "torch.optim.Adam"})
    with pytest.raises(UserError, match="has none; set callbacks.encoder_gradient_variance.num_draws=0"):
        EncoderGradientVariance(num_draws=3).setup(None, model, "fit")


def test_the_command_line_refusal_reads_as_one_line(tmp_path):
    result = run_cli(["kl_schedule=linear"], cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: kl_schedule=linear has no effect on model=vae: only model=beta_vae reads kl_schedule; "
        "use model=beta_vae kl_schedule=linear, or leave kl_schedule at its default (kl_schedule=constant)"
    )


def test_building_is_not_reached_by_a_target_that_cannot_be_imported(tmp_path, monkeypatch):
    """The optimizer is built inside fit, after the run folder exists: its name is checked first."""
    monkeypatch.setattr(vaelab.training, "build_model", lambda cfg: pytest.fail("the model was built"))
    with pytest.raises(UserError, match=r"model.optimizer._target_=torch.optim.Adamm cannot be imported"):
        train(compose_config(["model.optimizer._target_=torch.optim.Adamm"], tmp_path))
    assert not (tmp_path / "config.yaml").exists()
