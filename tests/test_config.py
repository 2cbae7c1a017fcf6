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
from vaelab.training import train

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
    if group == "experiment" and option.startswith("dsprites_"):  # its own data (dsprites_small), scored cheaply
        return ["callbacks.disentanglement.num_points=200", "callbacks.disentanglement.dci_points=50"]
    if group == "kl_schedule":
        return ["model=beta_vae"]  # the schedules belong to the beta-VAE
    if group == "experiment":
        # The IWAE-paper experiments evaluate with k = 5000 on the test split: cut for the test.
        # Each experiment's data set is the tests' own small file of its format, never a data set
        # installed on the machine (a fresh clone has none).
        extra = ["model.test_k=5"] if option.startswith("iwae_paper") else []
        data = compose_config([f"experiment={option}"], "/tmp/unused").data
        if "path" in data:
            return [f"data.path={files['binarized_mnist']}", *extra]
        if "root" in data:
            return [*data_overrides("data", data.name, files), *extra]
        return extra
    if (group, option) == ("data", "tensors"):
        return [f"data.path={files['tensors']}"]
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
            given = model.given(batch[1].to(model.device))
            _, metrics = model.step_metrics(model.images(batch).to(model.device), **given)
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
    if any(o in overrides for o in (f"data.root={data_files['fashion']}", f"data.path={data_files['images']}")):
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


# The models with a continuous latent besides vae, as the messages list them.
LATENT_MODELS = "beta_tcvae, beta_vae, cvae, dip_vae, factor_vae, iwae, mmd_vae"

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
    (["model.posterior=flow"], "model.posterior must be diagonal, full, planar or iaf"),
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
    (["model=beta_tcvae", "model/prior=vamp"], "model=beta_tcvae splits its KL into terms that need a factorised"),
    (["model=beta_vae", "model/prior=mog", "model.free_bits=0.5"], "model.free_bits needs model/prior=standard"),
    (["model/prior=vamp", "model.posterior=full"], "model/prior=vamp with model.posterior=full"),
    (["model/prior=mog", "model.prior.init_std=0"], "model.prior.init_std=0 starts all 10 components equal"),
    (["model=iwae", "model.posterior=planar", "model.dreg=true"], "model.dreg=true needs a Gaussian posterior"),
    (["model.flow_steps=4"], "model.flow_steps has no effect with model.posterior=diagonal"),
    (["model.posterior=iaf", "model/prior=vamp"], "model/prior=vamp mixes q(z|u_k)"),
    (["model.top_hidden=[64]"], "model.top_hidden has no effect without a second stochastic layer"),
    (["model.top_latents=8", "model/prior=mog"], "with model.top_latents the prior is p(z1|z2) N(z2; 0, I)"),
    (["model=iwae", "model.top_latents=8", "model.dreg=true"], "model.dreg=true is implemented for one Gaussian layer"),
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
    (["net=conv", "net.kernel=5"], "net.kernel must be 3 or 4, got 5"),
    (["likelihood=gaussian", "data.num_levels=null"], "data.num_levels=null, but a continuous likelihood on discrete"),
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
    (["trainer.gradient_clip_algorithm=abs"], "trainer.gradient_clip_algorithm must be norm or value, got 'abs'"),
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
    # A setting that cannot change the run: refused, naming what reads it.
    (
        ["kl_schedule=linear"],
        "kl_schedule=linear has no effect on model=vae: only model=beta_vae reads kl_schedule; "
        "use model=beta_vae kl_schedule=linear, or leave kl_schedule at its default (kl_schedule=constant)",
    ),
    (["model=iwae", "kl_schedule=cyclical"], "kl_schedule=cyclical has no effect on model=iwae: only model=beta_vae"),
    (["model=beta_tcvae", "kl_schedule=capacity"], "kl_schedule=capacity has no effect on model=beta_tcvae"),
    (["model=vqvae", "kl_schedule=linear"], "kl_schedule=linear has no effect on model=vqvae"),
    (
        ["experiment=reproduce_mnist_vae", "model=iwae"],
        "kl_schedule=linear has no effect on model=iwae: only model=beta_vae reads kl_schedule",
    ),
    (
        ["model=iwae", "model.beta=8"],
        "model.beta has no effect on model=iwae: the importance-weighted bound has no KL term to weigh; "
        "drop model.beta (model=beta_vae weighs the KL)",
    ),
    (
        ["model=beta_vae", "kl_schedule=capacity", "model.beta=8"],
        "model.beta has no effect with kl_schedule=capacity, whose KL weight is kl_schedule.gamma; "
        "drop model.beta or set kl_schedule.gamma=<weight>",
    ),
    (
        ["model.baseline_decay=0.9"],
        "model.baseline_decay has no effect with model.estimator=reparam: it is the score-function estimator's "
        "baseline; set model.estimator=score_function or drop model.baseline_decay",
    ),
    (
        ["model=iwae", "model.baseline_decay=0.9"],
        "model.baseline_decay has no effect on model=iwae, which trains with reparameterized gradients only; "
        "drop model.baseline_decay",
    ),
    (
        ["model=beta_tcvae", "model.baseline_decay=0.9"],
        "model.baseline_decay has no effect on model=beta_tcvae, which trains with reparameterized gradients only",
    ),
    (
        ["prior.vqvae_ckpt=/tmp/vqvae.ckpt"],
        "prior.vqvae_ckpt=/tmp/vqvae.ckpt has no effect on model=vae: only model=vqvae_prior reads prior.vqvae_ckpt; "
        "drop prior.vqvae_ckpt=/tmp/vqvae.ckpt or use model=vqvae_prior",
    ),
    (
        ["model=vqvae", "net=conv"],
        f"net=conv has no effect on model=vqvae: only model={LATENT_MODELS} and vae read net; "
        f"use net=conv with model={LATENT_MODELS} or vae, or leave net at its default (net=mlp)",
    ),
    (
        ["model=vqvae", "size.latent_dim=8"],
        f"size.latent_dim=8 has no effect on model=vqvae: only model={LATENT_MODELS} and vae read "
        "size.latent_dim; drop size.latent_dim=8 or use one of them",
    ),
    (
        ["size.vq_hidden=100"],
        "size.vq_hidden=100 has no effect on model=vae: only model=vqvae reads size.vq_hidden; "
        "drop size.vq_hidden=100 or use model=vqvae",
    ),
    (
        ["net=conv", "size.hidden_dims=[64]"],
        "size.hidden_dims=[64] has no effect on net=conv: only net=mlp reads size.hidden_dims",
    ),
    (
        ["net=betavae_conv", "data=synthetic", "data.image_shape=[1,32,32]", "size.channels=[8,8]"],
        "size.channels=[8, 8] has no effect on net=betavae_conv: only net=conv reads size.channels",
    ),
    (
        ["paths.data_dir=/tmp/elsewhere"],
        "paths.data_dir=/tmp/elsewhere has no effect on data=digits: only data=binarized_mnist, celeba, cifar10, "
        "fashion_mnist and mnist read paths.data_dir",
    ),
    (
        ["data=mnist", "data.root=/tmp", "paths.data_dir=/tmp/elsewhere"],
        "paths.data_dir=/tmp/elsewhere has no effect on data=mnist: this run gives data.root itself, which "
        "data=mnist reads from paths.data_dir otherwise; drop paths.data_dir=/tmp/elsewhere",
    ),
    (
        ["+likelihood.sigma=0.5"],
        "likelihood.sigma has no effect with likelihood=bernoulli: it is a setting of likelihood=gaussian; "
        "drop likelihood.sigma or choose likelihood=gaussian",
    ),
    (
        ["likelihood=gaussian", "+likelihood.temperature=2"],
        "likelihood.temperature is not a setting of likelihood=gaussian (it takes sigma, learn_sigma and "
        "num_levels); drop it",
    ),
    (
        ["+net.kernel=4"],
        "net.kernel has no effect with net.kind=mlp (it takes hidden_dims and activation); "
        "drop net.kernel or choose net=conv",
    ),
    (
        ["net=conv", "+net.hidden_dims=[10]"],
        "net.hidden_dims has no effect with net.kind=conv (it takes channels, activation, kernel and dense); "
        "drop net.hidden_dims or choose net=mlp",
    ),
    (
        ["model=beta_vae", "kl_schedule=linear", "kl_schedule.warmup_steps=100", "kl_schedule.warmup_epochs=5"],
        "kl_schedule.warmup_epochs has no effect when kl_schedule.warmup_steps is set; "
        "give one of them (kl_schedule.warmup_epochs=null)",
    ),
    (
        ["model=beta_vae", "+kl_schedule.warmup_steps=10"],
        "kl_schedule.warmup_steps is not a setting of kl_schedule=constant, which takes none; drop it",
    ),
    (
        ["model=beta_vae", "kl_schedule=cyclical", "+kl_schedule.warmup_steps=10"],
        "kl_schedule.warmup_steps is not a setting of kl_schedule=cyclical (it takes total_steps, total_epochs, "
        "cycles and ratio); drop it",
    ),
    (
        ["data=celeba", "data.val_size=100"],
        "data.val_size has no effect on data=celeba, which has its own validation split; drop data.val_size",
    ),
    (
        ["data=dsprites", "data.path=/tmp/dsprites.npz", "data.num_scales=3"],
        "data.num_scales has no effect with data.path set: the file's factors make the grid; "
        "drop data.num_scales, or set data.path=null to draw the images",
    ),
    (
        ["likelihood=gaussian", "data.binarize=dynamic"],
        "data.binarize=dynamic has no effect with likelihood=gaussian: a continuous likelihood sees dequantized "
        "pixels; drop data.binarize or choose likelihood=bernoulli",
    ),
    (
        ["data=synthetic", "data.binarize=dynamic"],
        "data.binarize=dynamic has no effect on binary images (data.num_levels=2); drop data.binarize",
    ),
    (
        ["data.likelihood=gaussian"],
        "data.likelihood=gaussian but likelihood.name=bernoulli: the data must be prepared for the model's "
        "likelihood; drop data.likelihood (it follows likelihood.name)",
    ),
    (
        ["model=vqvae", "model.quantizer.update=loss", "model.quantizer.decay=0.9"],
        "model.quantizer.decay has no effect with model.quantizer.update=loss (it is the rate of the EMA codebook "
        "updates); drop it or set model.quantizer.update=ema",
    ),
    (
        ["model=vqvae", "model.quantizer.kmeans_init=false", "model.quantizer.kmeans_iterations=3"],
        "model.quantizer.kmeans_iterations has no effect with model.quantizer.kmeans_init=false; "
        "drop it or set model.quantizer.kmeans_init=true",
    ),
    (
        ["callbacks.encoder_gradient_variance.batch_size=10"],
        "callbacks.encoder_gradient_variance.batch_size has no effect while "
        "callbacks.encoder_gradient_variance.num_draws=0 (off); set callbacks.encoder_gradient_variance.num_draws=<N>",
    ),
    (
        ["callbacks=[default,disentanglement]", "data=dsprites_small", "test=false"],
        "callbacks.disentanglement scores the test split after fitting, which test=false skips; "
        "set test=true or callbacks.disentanglement.every_n_epochs=<N>",
    ),
    (
        ["model.test_k=5", "test=false"],
        "model.test_k reports a bound on the test split, which test=false skips; set test=true or model.test_k=0",
    ),
    (
        ["callbacks.learning_rate_monitor.logging_interval=step"],
        "callbacks.learning_rate_monitor.logging_interval has no effect without model.scheduler "
        "(the monitor is left out when there is no schedule to follow); set model.scheduler or drop it",
    ),
    (
        ["trainer.enable_progress_bar=false", "callbacks.progress_bar.refresh_rate=1"],
        "callbacks.progress_bar.refresh_rate has no effect with trainer.enable_progress_bar=false; "
        "drop it or set trainer.enable_progress_bar=true",
    ),
    (
        ["trainer.enable_model_summary=false", "callbacks.model_summary.max_depth=2"],
        "callbacks.model_summary.max_depth has no effect with trainer.enable_model_summary=false",
    ),
    (
        ["trainer.gradient_clip_algorithm=value"],
        "trainer.gradient_clip_algorithm has no effect without trainer.gradient_clip_val; "
        "set trainer.gradient_clip_val=<limit> or drop it",
    ),
    (
        ["model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,monitor:val/loss}"],
        "model.scheduler.monitor has no effect on StepLR: only ReduceLROnPlateau follows a metric; "
        "drop model.scheduler.monitor",
    ),
    (
        ["trainer.use_distributed_sampler=true"],
        "trainer.use_distributed_sampler=true would shard batches that the data modules already share out "
        "across processes; leave it false",
    ),
    (["callbacks.image_grids.dirpath=5"], "callbacks.image_grids.dirpath must be a string, got 5"),
    (
        ["experiment=reproduce_mnist_vae", "model.scheduler.T_max=abc"],
        "model.scheduler.T_max must be a whole number, got 'abc'",
    ),
    (["+data.batchsize=10"], "data.batchsize is not a setting of data=digits (did you mean data.batch_size?); drop it"),
    (["+data.colour=true"], "data.colour is not a setting of data=digits; drop it"),
    (["+model.latentdim=3"], "model.latentdim is not a setting of model=vae (did you mean model.latent_dim?); drop it"),
    (["model=vqvae", "+model.test_k=5"], "model.test_k is not a setting of model=vqvae; drop it"),
    # A _target_ that cannot be imported, and arguments its class does not take, before anything is built.
    (
        ["model.optimizer._target_=torch.optim.Adamm"],
        "model.optimizer._target_=torch.optim.Adamm cannot be imported (torch.optim has no Adamm; "
        "did you mean Adam?); give the module.name of a class or function",
    ),
    (
        ["model.optimizer._target_=nosuchpackage.Adam"],
        "model.optimizer._target_=nosuchpackage.Adam cannot be imported (there is no module nosuchpackage)",
    ),
    (
        ["model.scheduler={_target_:torch.optim.lr_scheduler.StepLRR,_partial_:true,step_size:1}"],
        "model.scheduler._target_=torch.optim.lr_scheduler.StepLRR cannot be imported "
        "(torch.optim.lr_scheduler has no StepLRR; did you mean StepLR?)",
    ),
    (
        ["experiment=iwae_paper", "model.scheduler.lr_lambda._target_=vaelab.schedules.IWAELR"],
        "model.scheduler.lr_lambda._target_=vaelab.schedules.IWAELR cannot be imported",
    ),
    (
        ["callbacks.image_grids._target_=vaelab.callbacks.ImageGrid"],
        "callbacks.image_grids._target_=vaelab.callbacks.ImageGrid cannot be imported "
        "(vaelab.callbacks has no ImageGrid; did you mean ImageGrids?)",
    ),
    (
        ["logger.csv._target_=lightning.pytorch.loggers.CSVLoggerr"],
        "logger.csv._target_=lightning.pytorch.loggers.CSVLoggerr cannot be imported",
    ),
    (["data._target_=vaelab.data.Digits"], "data._target_=vaelab.data.Digits cannot be imported"),
    (["trainer._target_=lightning.Trainerr"], "trainer._target_=lightning.Trainerr cannot be imported"),
    (
        ["+model.optimizer.momentum=0.9"],
        "model.optimizer.momentum is not an argument of torch.optim.Adam; drop it",
    ),
    (
        ["model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,step_size:1,gamma_:2}"],
        "model.scheduler.gamma_ is not an argument of torch.optim.lr_scheduler.StepLR "
        "(did you mean model.scheduler.gamma?); drop it",
    ),
    (
        ["+likelihood.temperature=2"],
        "likelihood.temperature is not a setting of likelihood=bernoulli, which takes none; drop it",
    ),
    # Lightning's trainer arguments (+trainer.<name>=...), checked against lightning.Trainer.
    (
        ["+trainer.max_epoch=3"],
        "trainer.max_epoch is not an argument of lightning.Trainer (did you mean trainer.max_epochs?); drop it",
    ),
    (["+trainer.min_epochs=abc"], "trainer.min_epochs must be a whole number or null, got 'abc'"),
    (["+trainer.benchmark=maybe"], "trainer.benchmark must be true, false or null, got 'maybe'"),
    (["+trainer.sync_batchnorm=maybe"], "trainer.sync_batchnorm must be true or false, got 'maybe'"),
    (["+trainer.num_sanity_val_steps=-5"], "trainer.num_sanity_val_steps must be a whole number ≥ -1, got -5"),
    (
        ["+trainer.reload_dataloaders_every_n_epochs=-1"],
        "trainer.reload_dataloaders_every_n_epochs must be a whole number ≥ 0, got -1",
    ),
    (
        ["+trainer.val_check_interval=abc"],
        "trainer.val_check_interval must be a fraction of an epoch in (0, 1], a whole number of batches ≥ 1 "
        "or a time such as 00:01:30:00 (DD:HH:MM:SS), got 'abc'",
    ),
    (
        ["+trainer.max_time=abc"],
        "trainer.max_time must be a time such as 00:12:00:00 (DD:HH:MM:SS) or "
        "{days: D, hours: H, minutes: M, seconds: S}, got 'abc'",
    ),
    (
        ["+trainer.logger=false"],
        "trainer.logger is made from the logger group; choose logger=<name> (logger=none for none) "
        "and drop trainer.logger",
    ),
    (
        ["+trainer.callbacks=[]"],
        "trainer.callbacks is made from the callbacks group; choose callbacks=[...] (callbacks=none for none) "
        "and drop trainer.callbacks",
    ),
    (["+trainer.plugins=[]"], "trainer.plugins is vaelab's (its checkpoint writer); drop trainer.plugins"),
    (
        ["+trainer.enable_checkpointing=false"],
        "trainer.enable_checkpointing=false but callbacks.model_checkpoint and callbacks.last_checkpoint write "
        "checkpoints; drop them (~callbacks.model_checkpoint ~callbacks.last_checkpoint) "
        "or trainer.enable_checkpointing",
    ),
    (
        ["+trainer.barebones=true"],
        "trainer.barebones=true turns off the checkpoints, loggers and progress bar that vaelab's runs use; "
        "drop it (callbacks=none logger=none make a lean run)",
    ),
    (
        ["callbacks.learning_rate_monitor.logging_interval=hour"],
        "callbacks.learning_rate_monitor.logging_interval must be step, epoch or null, got 'hour'",
    ),
    (
        ["callbacks.model_checkpoint.save_last=maybe"],
        "callbacks.model_checkpoint.save_last must be true, false, link or null, got 'maybe'",
    ),
    # Seeds: integers from 0 to 2^32 - 1, as the run's own.
    (["data.seed=abc"], "data.seed must be an integer from 0 to 4294967295, got 'abc'"),
    (["data.seed=-1"], "data.seed must be an integer from 0 to 4294967295, got -1"),
    (["data.seed=1.5"], "data.seed must be an integer from 0 to 4294967295, got 1.5"),
    (["data=dsprites_small", "data.split_seed=abc"], "data.split_seed must be an integer from 0 to 4294967295"),
    (["model=vqvae", "model.quantizer.seed=-3"], "model.quantizer.seed must be an integer from 0 to 4294967295"),
    (
        ["callbacks=[default,disentanglement]", "data=dsprites_small", "callbacks.disentanglement.seed=x"],
        "callbacks.disentanglement.seed must be an integer from 0 to 4294967295, got 'x'",
    ),
    # A callback refused for a model it does not apply to, before training.
    (
        ["model=vqvae", "callbacks.encoder_gradient_variance.num_draws=5"],
        "callbacks.encoder_gradient_variance measures the encoder gradient of a model with q(z|x), and model=vqvae "
        "has none; set callbacks.encoder_gradient_variance.num_draws=0",
    ),
    (
        ["model=vqvae", "callbacks=[default,disentanglement]", "data=dsprites_small"],
        "callbacks=[...,disentanglement] scores the posterior means, and this model has no q(z|x) (a VQ-VAE): "
        "drop the callback",
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


def documented_messages() -> dict[str, str]:
    """docs/errors.md's rows: {the command as typed there: its message}."""
    rows = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text().splitlines()
    cells = [row[len("| `") :].rstrip(" |").split("` | ", 1) for row in rows if row.startswith("| `")]
    return {cell[0]: cell[1] for cell in cells if len(cell) == 2}


@pytest.mark.parametrize("overrides,message", BAD_VALUES, ids=[" ".join(o) for o, _ in BAD_VALUES])
def test_bad_values_fail_before_training_with_one_line(overrides, message, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from error_table import typed

    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(UserError) as err:
        train(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "checkpoints").exists()  # nothing was trained
    # The whole message is the one docs/errors.md shows (a tail added here would not be there).
    shown = str(err.value).replace(str(tmp_path), "<run dir>").replace("|", "/")
    assert documented_messages().get(typed(overrides)) == shown, "run benchmarks/error_table.py"


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

    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from error_table import typed  # the rows as they are typed at a shell prompt

    missing = [" ".join(o) for o, m in BAD_VALUES if not documented(f"| `{typed(o)}` |", m)]
    missing += [" ".join(o) for o, m in EVAL_BAD_VALUES if not documented(f" {typed(o)}` |", m)]
    assert not missing, f"run benchmarks/error_table.py and paste its table into docs/errors.md: {missing}"
