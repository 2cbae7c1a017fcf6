"""Variance of the encoder's gradient under the two estimators, on one model and one batch.

Trains the default VAE (digits, MLP) briefly with reparameterized gradients, then, on that
model and a fixed batch of 100 training images, draws the encoder's gradient S times with
each estimator and reports the per-coordinate variance and the signal-to-noise ratio.

    .venv/bin/python benchmarks/estimator_variance.py --epochs 10 --draws 200
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from vaelab.building import instantiate_model, instantiate_plain
from vaelab.config import compose_config
from vaelab.diagnostics import encoder_gradient_samples, gradient_variance
from vaelab.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(
            [f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false", "logger=none", "test=false"], out
        )
        train(cfg)
        model = instantiate_model(cfg.model)
        model.load_state_dict(torch.load(f"{out}/checkpoints/last.ckpt", weights_only=False)["state_dict"])
    datamodule = instantiate_plain(cfg.data)
    datamodule.prepare()
    x = datamodule.fixed_eval_split("train").images[:100].float()
    torch.manual_seed(0)
    with torch.no_grad():
        model.train()
        mean_log_px = model.terms(x)["log_px_given_z"].mean()
    rows = []
    for name, estimator, baseline in (
        ("reparameterization", "reparam", 0.0),
        ("score function, no baseline", "score_function", 0.0),
        ("score function, baseline = mean log p(x|z)", "score_function", mean_log_px),
    ):
        model.estimator = estimator
        model.baseline.fill_(float(baseline))
        rows.append((name, gradient_variance(encoder_gradient_samples(model, x, args.draws))))
    print(f"VAE (digits, MLP 64-200-200-50), trained {args.epochs} epochs; encoder gradient over {args.draws} draws")
    print("| estimator | mean variance per coordinate | mean squared gradient | SNR |")
    print("|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['grad_variance']:.3e} | {s['grad_mean_sq']:.3e} | {s['snr']:.3g} |")
    print(
        "variance ratio score function (baseline) / reparameterization: "
        f"{rows[2][1]['grad_variance'] / rows[0][1]['grad_variance']:.0f}"
    )


if __name__ == "__main__":
    main()
