"""Checks of a composed config, run before anything is loaded or built, so a user's mistake
costs seconds and reads as one sentence (a ``UserError``) rather than a traceback."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from vaelab.errors import UserError
from vaelab.nets import ACTIVATIONS


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(value, key: str) -> None:
    require(is_int(value) and value >= 1, f"{key} must be a whole number ≥ 1, got {value!r}; set {key}=<N>")


def check_data(data: DictConfig) -> None:
    positive_int(data.batch_size, "data.batch_size")
    if data.get("eval_batch_size") is not None:
        positive_int(data.eval_batch_size, "data.eval_batch_size")
    shape = data.image_shape
    require(len(shape) == 3 and all(is_int(s) and s >= 1 for s in shape),
            f"data.image_shape must be [channels, height, width] of positive integers, got {list(shape)}")
    require(data.binarize in ("auto", "dynamic", "none"),
            f"data.binarize must be auto, dynamic or none, got {data.binarize!r}")
    if "path" in data and data.path is None:
        raise UserError("data.path is not set; point it at your data with data.path=<file or folder>")
    require(isinstance(data.get("on_device", False), bool) and isinstance(data.get("pin_memory", False), bool),
            "data.on_device and data.pin_memory must be true or false")
    workers = data.get("num_workers", 0)
    require(is_int(workers) and workers >= 0, f"data.num_workers must be a whole number ≥ 0, got {workers!r}")
    require(not (data.get("on_device") and (workers or data.get("pin_memory"))),
            "data.on_device=true cuts batches on the GPU itself; drop data.num_workers and data.pin_memory "
            "(they are for data kept on the host)")
    if data._target_.endswith("ImageFolderDataModule"):
        require(shape[0] in (1, 3), f"data.image_shape[0] (channels) must be 1 or 3 for image_folder, got {shape[0]}")


def check_vqvae(model: DictConfig, image_shape) -> None:
    q = model.quantizer
    require(is_int(q.num_codes) and q.num_codes >= 2, f"model.quantizer.num_codes (K) must be ≥ 2, got {q.num_codes!r}")
    positive_int(q.code_dim, "model.quantizer.code_dim")
    require(is_number(q.beta) and q.beta >= 0, f"model.quantizer.beta must be ≥ 0, got {q.beta!r}")
    require(q["update"] in ("ema", "loss"), f"model.quantizer.update must be ema or loss, got {q['update']!r}")
    require(is_number(q.decay) and 0 < q.decay < 1, f"model.quantizer.decay must be in (0, 1), got {q.decay!r}")
    require(is_number(q.dead_threshold) and q.dead_threshold >= 0,
            f"model.quantizer.dead_threshold must be ≥ 0, got {q.dead_threshold!r}")
    require(q.lookup_dim is None or (is_int(q.lookup_dim) and q.lookup_dim >= 1),
            f"model.quantizer.lookup_dim must be null or ≥ 1, got {q.lookup_dim!r}")
    positive_int(model.hidden, "size.vq_hidden")
    _, height, width = image_shape
    require(height % 4 == 0 and width % 4 == 0 and height >= 4 and width >= 4,
            f"model=vqvae needs images whose height and width are multiples of 4 (it downsamples by 4), "
            f"got {height}x{width}; choose another data set or data.image_shape")


def check_model(model: DictConfig) -> None:
    if model._target_.endswith("CodePrior"):
        require(model.vqvae_ckpt is not None, "model=vqvae_prior needs prior.vqvae_ckpt=<a VQ-VAE checkpoint>")
        require(Path(model.vqvae_ckpt).is_file(), f"prior.vqvae_ckpt={model.vqvae_ckpt} does not exist; "
                "give the path of a VQ-VAE run's checkpoint")
        return
    if model._target_.endswith("VQVAE"):
        check_vqvae(model, model.image_shape)
        lr = model.optimizer.get("lr")
        require(lr is None or (is_number(lr) and lr > 0), f"model.optimizer.lr must be > 0, got {lr!r}")
        return
    positive_int(model.latent_dim, "size.latent_dim")
    require(is_number(model.beta) and model.beta >= 0, f"model.beta must be a number ≥ 0, got {model.beta!r}")
    lr = model.optimizer.get("lr")
    require(lr is None or (is_number(lr) and lr > 0), f"model.optimizer.lr must be > 0, got {lr!r}")
    net = model.net
    require(net.kind in ("mlp", "conv"), f"net.kind must be mlp or conv, got {net.kind!r}; choose net=mlp or net=conv")
    require(net.activation in ACTIVATIONS,
            f"net.activation must be one of {sorted(ACTIVATIONS)}, got {net.activation!r}")
    require(not model.get("channels_last") or net.kind == "conv",
            "model.channels_last=true is a memory layout for convolutions; use it with net=conv")
    widths_key = "hidden_dims" if net.kind == "mlp" else "channels"
    widths = net[widths_key]
    require(len(widths) >= 1 and all(is_int(w) and w >= 1 for w in widths),
            f"net.{widths_key} (from size.{widths_key}) must be a non-empty list of positive integers, got {list(widths)}")
    lik = model.likelihood
    require(lik.name in ("bernoulli", "gaussian"),
            f"likelihood.name must be bernoulli or gaussian, got {lik.name!r}; choose likelihood=bernoulli|gaussian|gaussian_learned")
    if lik.name == "gaussian":
        require(is_number(lik.sigma) and lik.sigma > 0, f"likelihood.sigma must be > 0, got {lik.sigma!r}")
        require(lik.learn_sigma in ("none", "global", "pixel"),
                f"likelihood.learn_sigma must be none, global or pixel, got {lik.learn_sigma!r}")


def check_variant(model: DictConfig) -> None:
    """Options of the posterior, the gradient estimator, IWAE and beta-VAE, and their combinations."""
    target = model._target_.rsplit(".", 1)[-1]
    if target in ("VQVAE", "CodePrior"):
        return
    require(model.get("posterior", "diagonal") in ("diagonal", "full"),
            f"model.posterior must be diagonal or full, got {model.get('posterior')!r}")
    estimator = model.get("estimator", "reparam")
    require(estimator in ("reparam", "score_function"),
            f"model.estimator must be reparam or score_function, got {estimator!r}")
    decay = model.get("baseline_decay", 0.99)
    require(is_number(decay) and 0 <= decay < 1, f"model.baseline_decay must be in [0, 1), got {decay!r}")
    test_k = model.get("test_k", 0)
    require(is_int(test_k) and test_k >= 0, f"model.test_k must be a whole number ≥ 0, got {test_k!r}")
    for key in ("k", "k_eval", "dreg"):
        require(key not in model or target == "IWAE",
                f"model.{key} belongs to the IWAE bound; use model=iwae (this is model={target})")
    if target == "IWAE":
        positive_int(model.k, "model.k")
        positive_int(model.k_eval, "model.k_eval")
        require(estimator == "reparam", "model=iwae trains with reparameterized gradients; "
                "set model.estimator=reparam (the score-function estimator is for the ELBO)")
    for key in ("kl_schedule", "free_bits"):
        require(key not in model or target == "BetaVAE", f"model.{key} needs model=beta_vae (this is model={target})")
    if target == "BetaVAE":
        check_kl_schedule(model.kl_schedule)
        free_bits = model.free_bits
        require(is_number(free_bits) and free_bits >= 0, f"model.free_bits must be ≥ 0 nats, got {free_bits!r}")
        require(free_bits == 0 or model.posterior == "diagonal",
                "model.free_bits needs model.posterior=diagonal (a full-covariance KL does not split per dimension)")


def check_kl_schedule(spec: DictConfig) -> None:
    names = ("constant", "linear", "cyclical", "capacity")
    require(spec.name in names, f"kl_schedule.name must be one of {', '.join(names)}, got {spec.name!r}; "
            "choose kl_schedule=<name>")
    for key, value in spec.items():
        if key.endswith("steps") or key.endswith("epochs") or key == "cycles":
            require(value is None or (is_number(value) and value > 0), f"kl_schedule.{key} must be > 0, got {value!r}")
    if spec.name == "cyclical":
        require(is_number(spec.ratio) and 0 < spec.ratio <= 1, f"kl_schedule.ratio must be in (0, 1], got {spec.ratio!r}")
    if spec.name == "capacity":
        require(is_number(spec.c_max) and spec.c_max >= 0, f"kl_schedule.c_max must be ≥ 0 nats, got {spec.c_max!r}")
        require(is_number(spec.gamma) and spec.gamma >= 0, f"kl_schedule.gamma must be ≥ 0, got {spec.gamma!r}")


def check_trainer(trainer: DictConfig, model: DictConfig) -> None:
    epochs = trainer.get("max_epochs")
    require(epochs is None or (is_int(epochs) and (epochs >= 1 or epochs == -1)),
            f"trainer.max_epochs must be ≥ 1 (or -1 for no limit), got {epochs!r}")
    clip = trainer.get("gradient_clip_val")
    require(clip is None or (is_number(clip) and clip >= 0), f"trainer.gradient_clip_val must be ≥ 0 or null, got {clip!r}")
    # A fused optimizer unscales 16-bit gradients inside its step, after the point where they are clipped.
    require(not (clip and str(trainer.get("precision")).startswith("16") and (model.get("optimizer") or {}).get("fused")),
            "trainer.gradient_clip_val under 16-bit precision needs an optimizer that is not fused; "
            "set model.optimizer.fused=false")


def check_ckpt_path(ckpt_path) -> None:
    if ckpt_path in (None, "last"):
        return
    require(Path(ckpt_path).is_file(), f"ckpt_path={ckpt_path} does not exist; give the path of a .ckpt file")


def check_config(cfg: DictConfig) -> None:
    """Every check of a training config; raises the first ``UserError`` found."""
    require(is_int(cfg.seed), f"seed must be an integer, got {cfg.seed!r}")
    require(cfg.nonfinite in ("stop", "skip"), f"nonfinite must be stop or skip, got {cfg.nonfinite!r}")
    check_data(cfg.data)
    check_model(cfg.model)
    check_variant(cfg.model)
    check_trainer(cfg.trainer, cfg.model)
    check_ckpt_path(cfg.get("ckpt_path"))
