"""Every option of every config group composes and runs; bad values fail before training."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

import vaelab.building as building
from vaelab.config import compose_config
from vaelab.errors import UserError
from vaelab.train import train

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = [
    "data",
    "model",
    "net",
    "size",
    "likelihood",
    "kl_schedule",
    "trainer",
    "logger",
    "callbacks",
    "debug",
    "experiment",
]
# The callbacks that callbacks=default composes run in every other test; alone they add nothing.
DEFAULT_CALLBACKS = set(yaml.safe_load((CONF / "callbacks" / "default.yaml").read_text())["defaults"]) - {"_self_"}
OPTIONS = [
    (group, path.stem)
    for group in GROUPS
    for path in sorted((CONF / group).glob("*.yaml"))
    if not path.stem.startswith("_")  # _name.yaml: a part other options include
    and not (group == "callbacks" and path.stem in DEFAULT_CALLBACKS)
]
QUICK = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]
NEEDS_DOWNLOAD = {("data", "cifar10"), ("data", "celeba")}  # torchvision checks their files' md5 sums
MULTI_PROCESS = {("trainer", "ddp"), ("trainer", "ddp_cpu")}  # run as a CLI subprocess in test_cli


# The beta-VAE papers' network needs images of at least 16x16 (four stride-2 4x4 convolutions); the
# dSprites sweep runs here on synthetic images of dSprites' kind (binary, 32x32), not on dSprites.
SMALL_BINARY_IMAGES = ["data=synthetic", "data.image_shape=[1,32,32]"]


def data_overrides(group: str, option: str, files: dict) -> list[str]:
    if (group, option) == ("net", "betavae_conv"):
        return SMALL_BINARY_IMAGES
    if (group, option) == ("experiment", "dsprites_beta_sweep"):  # its own data (dsprites_small), scored cheaply
        return ["callbacks.disentanglement.num_points=200", "callbacks.disentanglement.dci_points=50"]
    if group == "kl_schedule":
        return ["model=beta_vae"]  # the schedules belong to the beta-VAE
    if group == "experiment":
        # The IWAE-paper experiments evaluate with k = 5000 on the test split: cut for the test.
        extra = ["model.test_k=5"] if option.startswith("iwae_paper") else []
        return (
            [f"data.path={files['binarized_mnist']}", *extra]
            if "path" in compose_config([f"experiment={option}"], "/tmp/unused").data
            else extra
        )
    if (group, option) == ("data", "binarized_mnist"):
        return [f"data.path={files['binarized_mnist']}"]
    if (group, option) == ("data", "mnist"):
        return [f"data.root={files['torchvision']}", "data.download=false", "data.val_size=20", "data.batch_size=20"]
    if (group, option) == ("data", "fashion_mnist"):
        return [f"data.root={files['fashion']}", "data.val_size=20", "data.batch_size=20"]
    if (group, option) == ("data", "image_folder"):
        return [f"data.path={files['images']}", "data.image_shape=[3,16,16]", "data.batch_size=8"]
    if (group, option) in NEEDS_DOWNLOAD:
        return ["data.root=/nonexistent/vaelab-test", "data.download=false"]
    return []


def test_the_option_list_is_complete():
    assert {g for g, _ in OPTIONS} == set(GROUPS)
    assert len(OPTIONS) >= 30


class BoundOnOneBatch(L.Callback):
    """The ELBO of one validation batch before and after training, with the same random numbers:
    a run that trained (whatever the option) has improved it."""

    def __init__(self):
        self.elbo: list[float] = []

    def measure(self, trainer, model):
        if not hasattr(model, "with_derived") or hasattr(model, "vqvae"):
            return  # the prior's bound is tested in test_vqvae
        batch = next(iter(trainer.datamodule.val_dataloader()))
        was_training = model.training
        model.eval()
        torch.manual_seed(0)
        with torch.no_grad():
            _, metrics = model.step_metrics(model.images(batch).to(model.device))
        self.elbo.append(float(model.with_derived(metrics)["elbo"]))
        model.train(was_training)

    def on_fit_start(self, trainer, model):
        self.measure(trainer, model)

    def on_fit_end(self, trainer, model):
        self.measure(trainer, model)


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_runs(group, option, tmp_path, data_files, monkeypatch):
    overrides = [
        f"{group}={option}",
        *data_overrides(group, option, data_files),
        *QUICK,
        "trainer.limit_train_batches=5",
    ]
    if group == "debug":
        overrides = [o for o in overrides if not o.startswith("trainer.max_epochs")] + ["trainer.max_epochs=2"]
    if (group, option) == ("callbacks", "disentanglement"):  # needs data with ground-truth factors
        overrides += [
            "data=dsprites_small",
            "callbacks.disentanglement.num_points=200",
            "callbacks.disentanglement.dci_points=50",
        ]
    if (group, option) in (("data", "fashion_mnist"), ("data", "image_folder")):
        overrides.append("trainer.max_epochs=4")  # their test files are noise: the bound improves more slowly
    cfg = compose_config(overrides, tmp_path / "run")
    if (group, option) in NEEDS_DOWNLOAD:
        with pytest.raises(UserError, match=f"{option} not found under data.root"):
            train(cfg)
        return
    if (group, option) == ("model", "vqvae_prior"):  # runs in test_vqvae, on a VQ-VAE trained there
        with pytest.raises(UserError, match="model=vqvae_prior needs prior.vqvae_ckpt"):
            train(cfg)
        return
    if (group, option) in MULTI_PROCESS or ((group, option) == ("trainer", "gpu") and not torch.cuda.is_available()):
        return  # composes; running needs several processes or a GPU
    bound = BoundOnOneBatch()
    original = building.build_callbacks
    monkeypatch.setattr(building, "build_callbacks", lambda c: [*original(c), bound])
    metrics = train(cfg)
    assert all(v == v for v in metrics.values()), metrics  # nothing NaN
    before, after = bound.elbo
    assert after > before, f"the ELBO of a validation batch went from {before:.3f} to {after:.3f} in training"
    if cfg.get("test") and not cfg.trainer.get("fast_dev_run"):
        assert (tmp_path / "run" / "test_metrics.json").is_file()


def test_command_line_group_choice_beats_the_experiment(tmp_path):
    cfg = compose_config(["experiment=binarized_mnist_vae", "size=small"], tmp_path)
    assert cfg.size.latent_dim == 16 and cfg.data.image_shape == [1, 28, 28]


def test_run_folder_holds_config_checkpoints_metrics_and_grids(tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(["trainer.max_epochs=2", "trainer.enable_progress_bar=false"], out)
    metrics = train(cfg)
    assert (out / "config.yaml").is_file()
    assert {p.name for p in (out / "checkpoints").iterdir()} == {"best.ckpt", "last.ckpt"}
    for name in ("reconstructions", "samples"):
        assert {p.name for p in (out / "images").glob(f"{name}_*.png")} == {
            f"{name}_epoch000.png",
            f"{name}_epoch001.png",
        }
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for stage in ("train", "val", "test"):
        suffix = "_epoch" if stage == "train" else ""
        for name in ("loss", "elbo", "recon", "kl", "bpd"):
            assert f"{stage}/{name}{suffix}" in header
    saved = json.loads((out / "test_metrics.json").read_text())
    assert saved["test/elbo"] == pytest.approx(metrics["test/elbo"])
    assert saved["test/elbo"] == pytest.approx(-(saved["test/recon"] + saved["test/kl"]))
    assert saved["test/loss"] == pytest.approx(-saved["test/elbo"])  # beta = 1
    assert saved["test/bpd"] == pytest.approx(-saved["test/elbo"] / (64 * 0.6931471805599453))


def test_validation_reports_the_training_objective_and_the_elbo(tmp_path):
    cfg = compose_config(["model.beta=4", *QUICK], tmp_path)
    m = train(cfg)
    assert m["val/loss"] == pytest.approx(m["val/recon"] + 4 * m["val/kl"], rel=1e-5)
    assert m["val/elbo"] == pytest.approx(-(m["val/recon"] + m["val/kl"]), rel=1e-5)


def test_global_batch_is_the_configured_batch(tmp_path):
    cfg = compose_config(["data.batch_size=50", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"], tmp_path)
    import lightning as L

    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(batch[0].shape[0])

    import vaelab.building as building

    original = building.build_callbacks
    building.build_callbacks = lambda c: [*original(c), Spy()]
    try:
        train(cfg)
    finally:
        building.build_callbacks = original
    assert seen == [50] * (1437 // 50)


BAD_VALUES = [
    (["data.batch_size=0"], "data.batch_size must be a whole number ≥ 1"),
    (["data.batch_size=2.5"], "data.batch_size must be a whole number ≥ 1"),
    (["data.batch_size=5000"], "data.batch_size=5000 is larger than the 1437 training examples"),
    (["size.latent_dim=0"], "size.latent_dim must be a whole number ≥ 1"),
    (["model.beta=-1"], "model.beta must be a number ≥ 0"),
    (["model.optimizer.lr=0"], "model.optimizer.lr must be > 0"),
    (["size.hidden_dims=[]"], "net.hidden_dims (from size.hidden_dims) must be a non-empty list"),
    (["net=conv", "size.channels=[16,-2]"], "net.channels (from size.channels) must be a non-empty list"),
    (["net.activation=swish"], "net.activation must be one of"),
    (["likelihood=gaussian", "likelihood.sigma=0"], "likelihood.sigma must be > 0"),
    (
        ["likelihood=gaussian_learned", "likelihood.learn_sigma=channel"],
        "likelihood.learn_sigma must be none, global or pixel",
    ),
    (["data.binarize=static"], "data.binarize must be auto, dynamic or none"),
    (["data.image_shape=[1,28,28]"], "have shape [1, 8, 8] but the config says data.image_shape=[1, 28, 28]"),
    (["data=image_folder"], "data.path is not set; point it at your data"),
    (["data=binarized_mnist", "data.path=/nonexistent/b.npz"], "data.path=/nonexistent/b.npz does not exist"),
    (["trainer.max_epochs=0"], "trainer.max_epochs must be ≥ 1"),
    (["ckpt_path=/nonexistent/model.ckpt"], "ckpt_path=/nonexistent/model.ckpt does not exist"),
    (["ckpt_path=last"], "ckpt_path=last but"),
    (["seed=abc"], "seed must be an integer"),
    (["model=iwae", "model.k=0"], "model.k must be a whole number ≥ 1"),
    (["model=iwae", "model.k_eval=0"], "model.k_eval must be a whole number ≥ 1"),
    (["model.estimator=reinforce"], "model.estimator must be reparam or score_function"),
    (["model=iwae", "model.estimator=score_function"], "model=iwae trains with reparameterized gradients"),
    (["+model.dreg=true"], "model.dreg belongs to the IWAE bound; use model=iwae"),
    (["model.posterior=flow"], "model.posterior must be diagonal or full"),
    (["model.baseline_decay=1.5"], "model.baseline_decay must be in [0, 1)"),
    (["model=beta_vae", "kl_schedule.name=sigmoid"], "kl_schedule.name must be one of"),
    (["model=beta_vae", "kl_schedule=capacity", "kl_schedule.c_max=-1"], "kl_schedule.c_max must be ≥ 0 nats"),
    (["model=beta_vae", "kl_schedule=cyclical", "kl_schedule.ratio=0"], "kl_schedule.ratio must be in (0, 1]"),
    (["model=beta_vae", "kl_schedule=linear", "kl_schedule.warmup_epochs=0"], "kl_schedule.warmup_epochs must be > 0"),
    (["model=beta_vae", "model.free_bits=-0.5"], "model.free_bits must be ≥ 0 nats"),
    (
        ["model=beta_vae", "model.free_bits=0.5", "model.posterior=full"],
        "model.free_bits needs model.posterior=diagonal",
    ),
    (["model.test_k=-1"], "model.test_k must be a whole number ≥ 0"),
    (["model=beta_tcvae", "model.alpha=-1"], "model.alpha must be a number ≥ 0, got -1"),
    (["model=beta_tcvae", "model.gamma=x"], "model.gamma must be a number ≥ 0, got 'x'"),
    (["model=beta_tcvae", "model.sampling=iwae"], "model.sampling must be mws or mss, got 'iwae'"),
    (
        ["model=beta_tcvae", "model.dataset_size=0"],
        "model.dataset_size must be null (the training split's size) or a whole number ≥ 1, got 0",
    ),
    (["model=beta_tcvae", "model.posterior=full"], "model=beta_tcvae needs model.posterior=diagonal"),
    (["model=beta_tcvae", "model.estimator=score_function"], "model=beta_tcvae trains with reparameterized"),
    (
        # 64 training examples, evaluated in batches of 128: MSS stratifies N over a batch's others.
        ["model=beta_tcvae", "data=synthetic", "data.num_train=64", "data.batch_size=32"],
        "model.sampling=mss needs batches of at most N + 1 = 65 examples (N: the training set's size), "
        "but this run has a batch of 128; lower data.batch_size or data.eval_batch_size, or set model.sampling=mws",
    ),
    (
        ["model=beta_tcvae", "data=synthetic", "model.dataset_size=10"],
        "model.sampling=mss needs batches of at most N + 1 = 11 examples",
    ),
    (["+model.alpha=1"], "model.alpha weighs the mutual information of model=beta_tcvae (this is model=VAE)"),
    (
        ["net=betavae_conv"],
        "the net's 4 stride-2 4x4 convolutions need images of at least 16x16, but data.image_shape is [1, 8, 8]",
    ),
    (["net=conv", "+net.kernel=5"], "net.kernel must be 3 or 4, got 5"),
    (["net=betavae_conv", "net.dense=[0]"], "net.dense must be a list of positive integers, got [0]"),
    (["data.eval_batch_size=0"], "data.eval_batch_size must be a whole number ≥ 1"),
    (["nonfinite=maybe"], "nonfinite must be stop or skip"),
    (["model=vqvae", "model.quantizer.num_codes=1"], "model.quantizer.num_codes (K) must be ≥ 2"),
    (["model=vqvae", "model.quantizer.code_dim=0"], "model.quantizer.code_dim must be a whole number ≥ 1"),
    (["model=vqvae", "model.quantizer.beta=-0.1"], "model.quantizer.beta must be ≥ 0"),
    (["model=vqvae", "model.quantizer.update=kmeans"], "model.quantizer.update must be ema or loss"),
    (
        ["model=vqvae", "data=synthetic", "data.image_shape=[1,6,6]"],
        "model=vqvae needs images whose height and width are multiples of 4",
    ),
    (["data.num_workers=-1"], "data.num_workers must be a whole number ≥ 0"),
    (["data.on_device=yes"], "data.on_device and data.pin_memory must be true or false"),
    (["data.on_device=true", "data.num_workers=2"], "data.on_device=true cuts batches on the GPU itself"),
    (
        ["model.channels_last=true"],
        "model.channels_last=true is a memory layout for convolutions; use it with net=conv",
    ),
    (["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be ≥ 0 or null"),
    (
        ["trainer.gradient_clip_val=1", "trainer.precision=16-mixed"],
        "trainer.gradient_clip_val under 16-bit precision needs an optimizer that is not fused",
    ),
    (["seed=-1"], "seed must be an integer from 0 to 4294967295 (or null for a random one), got -1"),
    (["test=maybe"], "test must be true or false, got 'maybe'"),
    (["tags=baseline"], "tags must be a list of words, e.g. tags=[baseline,mnist], got 'baseline'"),
    (["extras.print_config=yes"], "extras.print_config must be true or false"),
    (
        ["callbacks=[default,early_stopping]", "callbacks.early_stopping.mode=up"],
        "callbacks.early_stopping.mode must be min or max, got 'up'",
    ),
    (
        ["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=-1"],
        "callbacks.early_stopping.patience must be a whole number ≥ 0",
    ),
    (
        ["callbacks=[default,disentanglement]", "callbacks.disentanglement.num_points=10"],
        "callbacks.disentanglement.num_points must be a whole number ≥ 200, got 10",
    ),
    (
        ["callbacks=[default,disentanglement]", "callbacks.disentanglement.dci_points=1"],
        "callbacks.disentanglement.dci_points must be null (all points) or a whole number ≥ 20, got 1",
    ),
    (
        ["callbacks=[default,disentanglement]", "callbacks.disentanglement.every_n_epochs=-1"],
        "callbacks.disentanglement.every_n_epochs must be a whole number ≥ 0",
    ),
    (["optimized_metric=elbo"], "optimized_metric must name a logged metric such as val/elbo, got 'elbo'"),
    (["optimized_metric=test/elbo", "test=false"], "optimized_metric=test/elbo is measured on the test split"),
    (["ckpt_path=/tmp"], "ckpt_path=/tmp is a folder; give the path of a .ckpt file"),
    (
        ["model=vqvae_prior", "prior.vqvae_ckpt=/tmp"],
        "prior.vqvae_ckpt=/tmp is a folder; give the path of a VQ-VAE run's checkpoint",
    ),
    (["data=mnist", "data.val_size=-5"], "data.val_size must be a whole number ≥ 1, got -5"),
    (["data=mnist", "data.name=svhn"], "data.name must be one of mnist, fashion_mnist, cifar10, celeba, got 'svhn'"),
    (["data=mnist", "data.download=maybe"], "data.download must be true or false, got 'maybe'"),
    (["data=synthetic", "data.num_prototypes=0"], "data.num_prototypes must be a whole number ≥ 1, got 0"),
    (["data=synthetic", "data.flip=2"], "data.flip must be a probability in [0, 1], got 2"),
    (
        ["data=image_folder", "data.path=/tmp", "data.val_fraction=0.6", "data.test_fraction=0.5"],
        "data.val_fraction and data.test_fraction must be ≥ 0 and leave images to train on",
    ),
    (["data=binarized_mnist", "data.path=/etc/passwd"], "data.path=/etc/passwd is a file but not a .npz"),
    (["data=dsprites", "data.draw=lazy"], "data.draw must be per_batch or once, got 'lazy'"),
    (["data=dsprites", "data.path=/nonexistent/d.npz"], "data.path=/nonexistent/d.npz does not exist; point it at"),
    (
        ["data=dsprites_small", "data.val_size=50000", "data.test_size=50000"],
        "data.val_size=50000 and data.test_size=50000 leave none of the 92160 images to train on",
    ),
    (["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be a whole number ≥ 1, got 0"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch must be a whole number ≥ 1, got 0"),
    (
        ["trainer.limit_train_batches=1.5"],
        "trainer.limit_train_batches must be a fraction in (0, 1] or a whole number of batches ≥ 1, got 1.5",
    ),
    (
        ["trainer.limit_train_batches=0"],
        "trainer.limit_train_batches must be a fraction in (0, 1] or a whole number of batches ≥ 1, got 0",
    ),
    (
        ["trainer.limit_val_batches=-1"],
        "trainer.limit_val_batches must be a fraction in [0, 1] or a whole number of batches ≥ 0, got -1",
    ),
    (
        ["trainer.precision=17"],
        "trainer.precision must be one of 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, 64-true, got 17",
    ),
    (
        ["trainer.accelerator=quantum"],
        "trainer.accelerator must be one of auto, cpu, gpu, cuda, mps, tpu, got 'quantum'",
    ),
    (
        ["trainer.devices=0"],
        "trainer.devices must be a number of devices ≥ 1, -1 (all), auto or a list of device indices, got 0",
    ),
    (
        ["trainer.accelerator=cpu", "trainer.devices=-1"],
        "trainer.devices must be a number of processes ≥ 1 with trainer.accelerator=cpu, got -1",
    ),
    (
        ["trainer.accelerator=gpu", "trainer.devices=1000"],
        "trainer.accelerator=gpu and trainer.devices=1000 ask for 1000 GPUs but",
    ),
    (["trainer=ddp", "trainer.strategy=ddpp"], "trainer.strategy must be auto or one of Lightning's strategies"),
    (["trainer.enable_progress_bar=maybe"], "trainer.enable_progress_bar must be true or false, got 'maybe'"),
    (["trainer.deterministic=maybe"], "trainer.deterministic must be true, false or warn, got 'maybe'"),
    (
        ["debug=profiler", "trainer.profiler=fancy"],
        "trainer.profiler must be null, simple, advanced or pytorch, got 'fancy'",
    ),
    (
        ["debug=fast_dev_run", "trainer.fast_dev_run=-1"],
        "trainer.fast_dev_run must be true, false or a number of batches ≥ 1, got -1",
    ),
    (["debug=overfit", "data.overfit_batches=-1"], "data.overfit_batches must be a whole number ≥ 0, got -1"),
    (
        ["+trainer.overfit_batches=2"],
        "trainer.overfit_batches does not fit these in-memory data sets; use debug=overfit",
    ),
    (["likelihood=gaussian", "likelihood.num_levels=256"], "likelihood.num_levels=256 but data.num_levels=17"),
    (
        ["model.scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true}"],
        "model.scheduler.monitor=val/elbo is higher when better; set model.scheduler.mode=max",
    ),
    (
        ["model.scheduler={_target_:torch.optim.lr_scheduler.ReduceLROnPlateau,_partial_:true,mode:max,interval:step}"],
        "model.scheduler ReduceLROnPlateau follows a validation metric; use model.scheduler.interval=epoch",
    ),
    (["trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be a whole number ≥ 1, got 0"),
    (
        ["model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,interval:batch}"],
        "model.scheduler.interval must be epoch or step, got 'batch'",
    ),
    (["+trainer.gradient_clip_algorithm=abs"], "trainer.gradient_clip_algorithm must be norm or value, got 'abs'"),
    (["callbacks.image_grids.num_images=1"], "callbacks.image_grids.num_images must be a whole number ≥ 2, got 1"),
    (
        ["callbacks.image_grids.every_n_epochs=0"],
        "callbacks.image_grids.every_n_epochs must be a whole number ≥ 1, got 0",
    ),
    (
        ["callbacks.encoder_gradient_variance.num_draws=1"],
        "callbacks.encoder_gradient_variance.num_draws must be 0 (off) or a whole number ≥ 2, got 1",
    ),
    (
        ["callbacks.encoder_gradient_variance.num_draws=5", "callbacks.encoder_gradient_variance.batch_size=0"],
        "callbacks.encoder_gradient_variance.batch_size must be a whole number ≥ 1, got 0",
    ),
    (
        ["callbacks.encoder_gradient_variance.num_draws=5", "callbacks.encoder_gradient_variance.every_n_epochs=0"],
        "callbacks.encoder_gradient_variance.every_n_epochs must be a whole number ≥ 1, got 0",
    ),
    (["callbacks.model_checkpoint.mode=lowest"], "callbacks.model_checkpoint.mode must be min or max, got 'lowest'"),
    (
        ["callbacks.model_checkpoint.save_top_k=-2"],
        "callbacks.model_checkpoint.save_top_k must be a whole number ≥ -1, got -2",
    ),
    (
        ["callbacks.progress_bar.refresh_rate=-1"],
        "callbacks.progress_bar.refresh_rate must be a whole number ≥ 0, got -1",
    ),
    (["logger=wandb", "logger.wandb.offline=maybe"], "logger.wandb.offline must be auto, true or false, got 'maybe'"),
    (
        ["logger=wandb", "logger.wandb.log_model=sometimes"],
        "logger.wandb.log_model must be true, false or all, got 'sometimes'",
    ),
    (
        ["logger=tensorboard", "logger.tensorboard.default_hp_metric=maybe"],
        "logger.tensorboard.default_hp_metric must be true or false, got 'maybe'",
    ),
    (["model.scheduler=foo"], "model.scheduler must be null or a config with _target_ and _partial_: true"),
    (
        ["experiment=iwae_paper", "model.scheduler.lr_lambda.stages=0"],
        "model.scheduler.lr_lambda.stages must be a whole number ≥ 1, got 0",
    ),
    (["+model.optimizer.eps=-1"], "model.optimizer.eps must be ≥ 0, got -1"),
    (["+model.optimizer.betas=[0.9,1.5]"], "model.optimizer.betas must be two numbers in [0, 1), got [0.9, 1.5]"),
    (["model.optimizer.fused=maybe"], "model.optimizer.fused must be true or false, got 'maybe'"),
    (["model.compile=maybe"], "model.compile must be true or false, got 'maybe'"),
    (["model=iwae", "model.dreg=maybe"], "model.dreg must be true or false, got 'maybe'"),
    (["model=vqvae", "likelihood=gaussian", "likelihood.sigma=0"], "likelihood.sigma must be > 0, got 0"),
    (["model=vqvae", "size.vq_hidden=1"], "size.vq_hidden must be a whole number ≥ 2, got 1"),
    (["model=vqvae", "size.vq_res_blocks=-1"], "size.vq_res_blocks must be a whole number ≥ 0, got -1"),
    (["model=vqvae", "model.quantizer.epsilon=0"], "model.quantizer.epsilon must be > 0, got 0"),
    (["model=vqvae", "model.quantizer.usage_decay=1.5"], "model.quantizer.usage_decay must be in (0, 1), got 1.5"),
    (
        ["model=vqvae", "model.quantizer.kmeans_iterations=-1"],
        "model.quantizer.kmeans_iterations must be a whole number ≥ 0, got -1",
    ),
    (["model=vqvae", "model.quantizer.cosine=maybe"], "model.quantizer.cosine must be true or false, got 'maybe'"),
    (["model=vqvae_prior", "model.heads=3"], "model.width (128) must be a multiple of model.heads (3)"),
    (["model=vqvae_prior", "model.layers=0"], "model.layers must be a whole number ≥ 1, got 0"),
    (["model=vqvae_prior", "model.dropout=1"], "model.dropout must be in [0, 1), got 1"),
    (["model=vqvae_prior", "model.optimizer.lr=-1"], "model.optimizer.lr must be > 0, got -1"),
    (
        ["model._target_=mymodels.NoSuchVAE"],
        "model._target_=mymodels.NoSuchVAE cannot be imported; give module.Class of a model, "
        "with the folder of its module on PYTHONPATH",
    ),
    (
        ["model._target_=torch.nn.Linear"],
        "model._target_=torch.nn.Linear is not a model: it must name a subclass of vaelab.models.base.GenerativeModel",
    ),
    (
        ["model=beta_vae", "kl_schedule=capacity", "trainer.max_epochs=-1"],
        "kl_schedule.epochs must be > 0, got -1 (it follows trainer.max_epochs); set kl_schedule.steps=<N>",
    ),
]


# eval.py's values, checked before the checkpoint is read (the one here does not exist).
EVAL_BAD_VALUES = [
    (["ckpt_path=/tmp"], "ckpt_path=/tmp is a folder; give the path of a .ckpt file"),
    (["seed=abc"], "seed must be an integer, got 'abc'"),
    (["pictures=maybe"], "pictures must be true or false, got 'maybe'"),
    (["progress=maybe"], "progress must be true or false, got 'maybe'"),
    (["disentanglement=maybe"], "disentanglement must be auto, true or false, got 'maybe'"),
    (["dci_points=5"], "dci_points must be null (all points) or a whole number ≥ 20, got 5"),
    (["data.download=maybe"], "data.download must be true, false or null, got 'maybe'"),
    (
        ["data.image_shape=[1,8]"],
        "data.image_shape must be null or [channels, height, width] of positive integers, got [1, 8]",
    ),
    (["logger=wandb", "logger.wandb.offline=maybe"], "logger.wandb.offline must be auto, true or false, got 'maybe'"),
]


def test_an_unknown_key_is_refused_by_hydra_naming_it(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="Could not override 'model.latent_size'"):
        compose_config(["model.latent_size=3"], tmp_path)


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_fail_before_training_with_one_line(overrides, message, tmp_path):
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(UserError) as err:
        train(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained


@pytest.mark.parametrize("overrides,message", EVAL_BAD_VALUES, ids=[" ".join(o) for o, _ in EVAL_BAD_VALUES])
def test_bad_eval_values_fail_before_evaluating_with_one_line(overrides, message, tmp_path):
    from vaelab.eval import evaluate_checkpoint

    if not any(o.startswith("ckpt_path=") for o in overrides):
        overrides = ["ckpt_path=/nonexistent/model.ckpt", *overrides]
    cfg = compose_config(overrides, tmp_path / "eval", config_name="eval")
    with pytest.raises(UserError) as err:
        evaluate_checkpoint(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_kl_schedule_given_in_steps_does_not_look_at_its_epochs(tmp_path):
    """kl_schedule=capacity spreads over trainer.max_epochs unless its steps are given: with them,
    a run without an epoch limit is fine."""
    from vaelab.config import check_config

    cfg = compose_config(
        ["model=beta_vae", "kl_schedule=capacity", "kl_schedule.steps=100", "trainer.max_epochs=-1"], tmp_path
    )
    check_config(cfg)


def test_a_new_run_never_writes_into_an_existing_run(tmp_path):
    train(compose_config(QUICK, tmp_path))
    before = (tmp_path / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(UserError, match="already holds a run's checkpoints; resume it with ckpt_path=last"):
        train(compose_config(QUICK, tmp_path))
    assert (tmp_path / "checkpoints" / "last.ckpt").read_bytes() == before


def test_docs_errors_lists_every_mistake_of_these_tables():
    """docs/errors.md is printed by benchmarks/error_table.py from the two tables above; a row added
    or a message changed here without re-running it leaves users without the message."""
    rows = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text().splitlines()

    def documented(command: str, message: str) -> bool:
        return any(command in row and message.replace("|", "/") in row for row in rows)

    missing = [" ".join(o) for o, m in BAD_VALUES if not documented(f"| `{' '.join(o)}` |", m)]
    missing += [" ".join(o) for o, m in EVAL_BAD_VALUES if not documented(f" {' '.join(o)}` |", m)]
    assert not missing, f"run benchmarks/error_table.py and paste its table into docs/errors.md: {missing}"
