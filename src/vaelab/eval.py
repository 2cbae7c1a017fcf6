"""Evaluation entry point: ``python eval.py ckpt_path=PATH`` or ``vaelab-eval``.

Loads a checkpoint with the config it was trained with, measures the split (see
``vaelab.metrics``) and, on data with ground-truth factors, the disentanglement of the posterior
means (``vaelab.disentanglement``), writes ``metrics.json`` and pictures into a new eval folder,
sends them to the configured loggers and prints a one-screen summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from torchvision.utils import save_image

from vaelab import pictures
from vaelab.building import build_loggers, instantiate_plain
from vaelab.callbacks import log_image
from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
from vaelab.checks import check_dci_points, check_loggers, flag, is_int, is_list, plain, require
from vaelab.config import CONFIG_DIR
from vaelab.data.in_memory import SPLIT_NOISE
from vaelab.disentanglement import dequantize_levels, disentanglement_metrics, mutual_information, posterior_means
from vaelab.errors import UserError
from vaelab.metrics import ACTIVE_UNIT_THRESHOLD, evaluate_split, evaluate_vq_split
from vaelab.models.base import CodebookModel, LatentVariableModel
from vaelab.progress import Phases

if TYPE_CHECKING:
    from vaelab.data.factors import GroundTruth
    from vaelab.data.in_memory import InMemoryDataModule, Split
    from vaelab.models.base import GenerativeModel
    from vaelab.models.cvae import CVAE
    from vaelab.models.prior import CodePrior
    from vaelab.models.vae import VAE
    from vaelab.models.vqvae import VQVAE


def build_data(checkpoint: dict, cfg: DictConfig, model: GenerativeModel) -> InMemoryDataModule:
    data_cfg = OmegaConf.create(checkpoint["vaelab"]["config"]["data"])
    for key, value in cfg.data.items():
        if value is not None:
            data_cfg[key] = value
    data_cfg.overfit_batches = 0  # evaluation is on the real split, whatever the training run debugged
    datamodule = instantiate_plain(data_cfg)
    datamodule.prepare()
    require(
        tuple(datamodule.image_shape) == tuple(model.image_shape),
        f"the data has images of shape {list(datamodule.image_shape)} but the checkpoint's model takes "
        f"{list(model.image_shape)}; evaluate on data of the model's shape",
    )
    return datamodule


def check_labels_of(model: CVAE, split: Split, where: str) -> None:
    """A conditional model is evaluated on labels it knows: refused otherwise, before any work."""
    from vaelab.models.cvae import check_label_sizes, label_sizes_of

    needed = label_sizes_of(split.labels)
    fix = "evaluate on data labelled as the model's training data were"
    require(needed is not None, f"the checkpoint's model is conditioned on labels, and {where} has none; {fix}")
    check_label_sizes(model.label_sizes, needed, "the checkpoint's model.label_sizes=", fix)


def check_eval_config(cfg: DictConfig) -> None:
    require(not OmegaConf.is_missing(cfg, "ckpt_path"), "no checkpoint given; run python eval.py ckpt_path=PATH")
    for key in ("k", "chunk", "batch_size", "num_images"):
        require(is_int(cfg[key]) and cfg[key] >= 1, f"{key} must be a whole number ≥ 1, got {cfg[key]!r}")
    require(cfg.split in ("test", "val"), f"split must be test or val, got {cfg.split!r}")
    require(cfg.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {cfg.device!r}")
    require(cfg.device != "cuda" or torch.cuda.is_available(), "device=cuda but no GPU is visible; use device=cpu")
    require(is_int(cfg.seed), f"seed must be an integer, got {cfg.seed!r}")
    flag(cfg.pictures, "pictures")
    flag(cfg.progress, "progress")
    require(
        cfg.disentanglement == "auto" or isinstance(cfg.disentanglement, bool),
        f"disentanglement must be auto, true or false, got {cfg.disentanglement!r}",
    )
    check_dci_points(cfg.get("dci_points"), "dci_points")
    require(
        cfg.data.download in (None, True, False),
        f"data.download must be true, false or null, got {cfg.data.download!r}",
    )
    shape = cfg.data.image_shape
    require(
        shape is None or (is_list(shape) and len(shape) == 3 and all(is_int(s) and s >= 1 for s in shape)),
        f"data.image_shape must be null or [channels, height, width] of positive integers, got {plain(shape)}",
    )
    check_loggers(cfg.get("logger"))


def ground_truth_to_score(
    cfg: DictConfig, datamodule: InMemoryDataModule, model: GenerativeModel, is_vq: bool
) -> GroundTruth | None:
    """The data's ground truth (its ``ground_truth`` attribute) when the disentanglement metrics
    are to be computed: with ``disentanglement=auto`` whenever the data has one and the model has
    a posterior to take the means of; ``true`` insists on both."""
    try:
        truth = getattr(datamodule, "ground_truth", None)
    except UserError:  # a file holding part of the factor grid: nothing to sample factors from
        if cfg.disentanglement is True:
            raise
        truth = None
    # A conditional model's q(z|x, y) is given the labels: its means are no representation of x alone.
    scorable = isinstance(model, LatentVariableModel) and not model.conditional
    if cfg.disentanglement is True:
        require(
            truth is not None,
            f"disentanglement=true but data {datamodule.name} has no ground-truth factors; evaluate on data "
            "generated from known factors (such as dSprites) or set disentanglement=auto",
        )
        require(
            scorable,
            "disentanglement=true but the model has no posterior q(z|x) of x alone to take the means of "
            "(a VQ-VAE, or a cVAE given the labels); set disentanglement=auto",
        )
    return truth if cfg.disentanglement is not False and scorable else None


def evaluate_disentanglement(
    model: VAE, truth: GroundTruth, datamodule: InMemoryDataModule, cfg: DictConfig, phases: Phases
) -> dict:
    """``disentanglement/<metric>`` for each score of ``disentanglement_metrics`` on the posterior
    means, the factors' names and the mutual information [latent][factor] of each latent with each
    factor (on the points MIG is scored on), which names the factor a latent is about."""
    represent = posterior_means(model, cfg.batch_size, dequantize_levels=dequantize_levels(datamodule))
    scores = disentanglement_metrics(truth, represent, seed=cfg.seed, dci_points=cfg.get("dci_points"), phases=phases)
    with phases("mutual information of each latent with each factor"):
        information = mutual_information(truth, represent, torch.Generator().manual_seed(cfg.seed))
    return {
        **{f"disentanglement/{name}": value for name, value in scores.items()},
        "disentanglement/factor_names": list(truth.factor_names),
        "disentanglement/mutual_information": information.tolist(),
    }


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    """Everything ``eval.py`` does; returns the metrics written to metrics.json."""
    check_eval_config(cfg)
    out = Path(cfg.paths.output_dir)
    require(
        not (out / "metrics.json").exists(),
        f"{out} already holds an evaluation; choose another hydra.run.dir (the default is a new folder)",
    )
    checkpoint = load_checkpoint(cfg.ckpt_path)
    model = model_from_checkpoint(checkpoint)
    datamodule = build_data(checkpoint, cfg, model)
    device = (
        "cuda"
        if cfg.device == "auto" and torch.cuda.is_available()
        else ("cpu" if cfg.device == "auto" else cfg.device)
    )
    model.to(device).eval()
    split = datamodule.fixed_eval_split(cfg.split)
    if model.conditional:
        check_labels_of(model, split, f"data {datamodule.name}'s {cfg.split} split")
    is_vq = isinstance(model, CodebookModel)
    truth = ground_truth_to_score(cfg, datamodule, model, is_vq)
    phases = Phases(enabled=cfg.progress)
    with phases("NLL bound" if is_vq else "NLL", quiet=True):  # the split's own bar
        results = measure(model, split, datamodule, cfg, is_vq)
    if not is_vq and len(model.latent_layers()) > 1:  # a two-layer model: its active units in each layer
        layers = torch.tensor(results["unit_activity"]).split(model.latent_layers())
        results["active_units_per_layer"] = [int((layer > ACTIVE_UNIT_THRESHOLD).sum()) for layer in layers]
    out.mkdir(parents=True, exist_ok=True)
    metrics = {key: value for key, value in results.items() if key not in ("per_example", "posterior_means")}
    metrics = {"ckpt_path": str(Path(cfg.ckpt_path).resolve()), "split": cfg.split, **metrics}
    if truth is not None:
        metrics.update(evaluate_disentanglement(model, truth, datamodule, cfg, phases))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    draws = cfg.pictures and datamodule.is_images
    if cfg.pictures and not draws:
        print("pictures: skipped, the data are vectors, not images", file=sys.stderr)
    with phases("pictures", quiet=not draws):
        images = pictures_of(model, split, results, metrics, truth, out, cfg, is_vq) if draws else {}
    loggers = build_loggers(cfg)
    for logger in loggers:
        logger.log_metrics({f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))}, step=0)
    for name, image in images.items():
        log_image(loggers, f"eval/{name}", image, step=0)
    for logger in loggers:
        logger.finalize("success")
    metrics["phase_seconds"] = {name: round(seconds, 3) for name, seconds in phases.seconds.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(vq_summary(metrics, out) if is_vq else summary(metrics, out))
    return metrics


def measure(model: GenerativeModel, split: Split, datamodule: InMemoryDataModule, cfg: DictConfig, is_vq: bool) -> dict:
    """The split's metrics (``vaelab.metrics``): the NLL bound, reconstruction and codebook health
    of a VQ model, the importance-sampled NLL, KL per dimension and active units of the others."""
    if is_vq:
        return evaluate_vq_split(
            model,
            split,
            batch_size=cfg.batch_size,
            dequantize=datamodule.dequantize,
            noise=SPLIT_NOISE[cfg.split],
            progress=cfg.progress,
        )
    return evaluate_split(
        model,
        split,
        k=cfg.k,
        chunk=cfg.chunk,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        dequantize=datamodule.dequantize,
        noise=SPLIT_NOISE[cfg.split],
        progress=cfg.progress,
    )


def pictures_of(
    model: GenerativeModel,
    split: Split,
    results: dict,
    metrics: dict,
    truth: GroundTruth | None,
    out: Path,
    cfg: DictConfig,
    is_vq: bool,
) -> dict:
    """The pictures under ``out/images``, by name."""
    if is_vq:
        return draw_vq_pictures(model, split, out, cfg.num_images, cfg.seed)
    if model.conditional:
        return draw_conditional_pictures(model, split, out, cfg.num_images, cfg.seed)
    images = draw_pictures(model, split, results, out, cfg.num_images, cfg.seed)
    if truth is not None and results["kl_per_dim"] is not None:  # a flow posterior has no KL per latent
        labels = pictures.factor_labels(
            results["kl_per_dim"],
            torch.tensor(metrics["disentanglement/mutual_information"]),
            list(truth.factor_names),
            list(truth.factor_sizes),
        )
        pictures.save_labelled_rows(images["traversals"], labels, out / "images" / "traversals_by_factor.png")
    return images


def draw_pictures(model: VAE, split: Split, results: dict, out: Path, num_images: int, seed: int) -> dict:
    """Writes the pictures under ``out/images`` and returns the grids by name."""
    folder = out / "images"
    folder.mkdir(exist_ok=True)
    n = min(num_images, len(split))
    x = split.unit(n)
    half = max(1, min(8, n // 2))
    images = {
        "samples": pictures.samples(model, num_images, seed),
        "reconstructions": pictures.reconstructions(model, x[: max(1, n // 2)]),
        "interpolation_linear": pictures.interpolations(model, x[:half], x[half : 2 * half]),
        "interpolation_spherical": pictures.interpolations(model, x[:half], x[half : 2 * half], spherical=True),
        # Latents by KL, or, for a flow posterior (no KL per latent), by activity; of a two-layer
        # model, the first layer's (the decoder reads z1: moving z2 alone changes no image).
        "traversals": pictures.traversals(
            model, x, (results["kl_per_dim"] or results["unit_activity"])[: model.latent_layers()[0]]
        ),
    }
    if results["latent_dim"] == 2 == model.latent_layers()[0]:
        images["manifold"] = pictures.manifold(model)
    if model.prior.has_pseudo_inputs:
        images["pseudo_inputs"] = pictures.pseudo_inputs(model)
    for name, image in images.items():
        save_image(image, folder / f"{name}.png")
    pictures.latent_map(results["posterior_means"], split.labels, folder / "latent_map.png")
    return images


def draw_conditional_pictures(model: CVAE, split: Split, out: Path, num_images: int, seed: int) -> dict:
    """A conditional model's pictures: samples cycling through the labels, a grid of samples per
    label value (the same z in each column), reconstructions with their own labels, and each
    image decoded with every label (``pictures.label_swaps``)."""
    folder = out / "images"
    folder.mkdir(exist_ok=True)
    n = max(1, min(num_images, len(split)) // 2)
    x, y = split.unit(n).to(model.device), split.labels[:n].to(model.device)
    images = {
        "samples": pictures.samples(model, num_images, seed),
        "samples_by_class": pictures.samples_by_class(model, seed=seed),
        "reconstructions": pictures.reconstructions(model, x, y),
        "label_swaps": pictures.label_swaps(model, x[:8], y[:8]),
    }
    for name, image in images.items():
        save_image(image, folder / f"{name}.png")
    return images


def draw_vq_pictures(model: VQVAE | CodePrior, split: Split, out: Path, num_images: int, seed: int) -> dict:
    """Samples (from the learned prior, or uniform codes for a first-stage VQ-VAE),
    reconstructions and the codebook usage."""
    from vaelab.callbacks import read_png, usage_histogram

    folder = out / "images"
    folder.mkdir(exist_ok=True)
    x = split.unit(max(1, min(num_images, len(split)) // 2))
    images = {
        "samples": pictures.samples(model, num_images, seed),
        "reconstructions": pictures.reconstructions(model, x),
    }
    for name, image in images.items():
        save_image(image, folder / f"{name}.png")
    quantizer = model.vq.quantizer
    usage_histogram(quantizer.usage.cpu(), quantizer.dead_threshold, folder / "codebook_usage.png")
    images["codebook_usage"] = read_png(folder / "codebook_usage.png")
    return images


def phase_times(m: dict) -> str:
    return ", ".join(f"{name} {seconds:.1f} s" for name, seconds in m.get("phase_seconds", {}).items())


def vq_summary(m: dict, out: Path) -> str:
    return "\n".join(
        [
            f"evaluated {m['ckpt_path']} on {m['num_examples']} {m['split']} examples",
            f"  -log p(x) <=    {m['nll_bound']:.2f} ± {m['nll_bound_stderr']:.2f} nats   ({m['bpd']:.4f} bits/dim; "
            f"{m['prior']} prior: {m['prior_nll']:.2f} nats of codes)",
            f"  reconstruction: {m['recon']:.2f} nats  MSE {m['mse']:.5f}  "
            f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}",
            f"  codebook:       {m['codes_used']:.1%} of {m['num_codes']} codes used, "
            f"perplexity {m['perplexity']:.1f}, "
            f"{m['dead_codes']} dead"
            + (
                f" of {m['codebooks'] * m['num_codes']} (all {m['codebooks']} codebooks; codes used and "
                "perplexity per codebook, averaged)"
                if m.get("codebooks", 1) > 1
                else ""
            ),
            *(
                [
                    "  by depth:       "
                    + ", ".join(f"{n + 1}: {r:.2f}" for n, r in enumerate(m["recon_by_depth"]))
                    + " nats of reconstruction from the first n codebooks"
                ]
                if "recon_by_depth" in m
                else []
            ),
            f"  time:           {phase_times(m)}",
            f"  written to:     {out}",
        ]
    )


def summary(m: dict, out: Path) -> str:
    return "\n".join(
        [
            f"evaluated {m['ckpt_path']} on {m['num_examples']} {m['split']} examples",
            f"  NLL (k={m['k']}):  {m['nll']:.2f} ± {m['nll_stderr']:.2f} nats   ({m['bpd']:.4f} bits/dim)"
            + ("   of p(x|y), given the labels" if m.get("conditional") else ""),
            *(
                [
                    f"  NLL of x alone: {m['nll_marginal']:.2f} ± {m['nll_marginal_stderr']:.2f} nats   "
                    "(p(x) = mean over the labels of p(x|y), comparable to a VAE's NLL)"
                ]
                if "nll_marginal" in m
                else []
            ),
            f"  -ELBO:          {-m['elbo']:.2f} nats  = recon {m['recon']:.2f} + KL {m['kl']:.2f}"
            + ("" if m.get("kl_estimate", "closed form") == "closed form" else f"   (KL: {m['kl_estimate']})"),
            f"  active units:   {m['active_units']} of {m['latent_dim']}"
            + (
                f"   (z1: {m['active_units_per_layer'][0]}, z2: {m['active_units_per_layer'][1]})"
                if "active_units_per_layer" in m
                else ""
            ),
            f"  reconstruction: MSE {m['mse']:.5f}  PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.4f}",
            *(
                [
                    f"  disentanglement: MIG {m['disentanglement/mig']:.3f}  "
                    f"FactorVAE {m['disentanglement/factor_vae']:.3f}  "
                    f"DCI D {m['disentanglement/dci_disentanglement']:.3f} "
                    f"C {m['disentanglement/dci_completeness']:.3f} "
                    f"I {m['disentanglement/dci_informativeness_test']:.3f}  "
                    f"SAP {m['disentanglement/sap']:.3f}"
                ]
                if "disentanglement/mig" in m
                else []
            ),
            f"  time:           {phase_times(m)}",
            f"  written to:     {out}",
        ]
    )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    try:
        evaluate_checkpoint(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
