"""Training throughput of `train.py` against a plain PyTorch loop of the same model.

The model is the IWAE paper's VAE (tanh MLP 784-200-200-50, Bernoulli output) on fixed-binarized
MNIST, batch 100, Adam 1e-3. The plain loop is written here from scratch (no vaelab code); ours
is `vaelab.train.train` with its default callbacks and CSV logger, exactly as a user runs it.
Both are timed over the training batches only (validation excluded), in one process.

    .venv/bin/python benchmarks/throughput.py --data ../shared/data/binarized_mnist.npz --epochs 5
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def load(path: str) -> dict[str, torch.Tensor]:
    with np.load(path) as d:
        return {k: torch.from_numpy(np.unpackbits(d[k], axis=1)[:, :784].astype(np.float32)) for k in ("train", "test")}


def plain_loop(data: dict[str, torch.Tensor], epochs: int, batch_size: int, seed: int) -> dict:
    torch.manual_seed(seed)
    enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 100))
    dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-3)

    def neg_elbo(x):
        mu, logvar = enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(dec(z), x, reduction="none").sum(-1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
        return (rec + kl).mean()

    x_train = data["train"]
    epoch_rates = []
    for epoch in range(epochs):
        order = torch.randperm(len(x_train))
        start = time.perf_counter()
        steps = len(x_train) // batch_size
        for i in range(steps):
            loss = neg_elbo(x_train[order[i * batch_size:(i + 1) * batch_size]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        epoch_rates.append(steps * batch_size / (time.perf_counter() - start))
    with torch.no_grad():
        test_elbo = -statistics.fmean(neg_elbo(b).item() for b in data["test"].split(1000))
    return {"samples_per_s": epoch_rates, "test_elbo": test_elbo}


class TrainTimer(L.Callback):
    """Seconds spent in training batches per epoch (validation excluded)."""

    def __init__(self):
        self.rates, self._start = [], None

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        if self._start is not None and not trainer.sanity_checking:
            steps = trainer.num_training_batches
            self.rates.append(steps * trainer.datamodule.batch_size / (time.perf_counter() - self._start))
            self._start = None


def our_loop(data_path: str, epochs: int, seed: int) -> dict:
    import vaelab.train as vt
    from vaelab.config import compose_config
    from vaelab.train import train

    timer = TrainTimer()
    original = vt.build_callbacks
    vt.build_callbacks = lambda cfg: [*original(cfg), timer]
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config([
            "data=binarized_mnist", f"data.path={data_path}", f"trainer.max_epochs={epochs}", f"seed={seed}",
            "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        ], out)
        metrics = train(cfg)
    vt.build_callbacks = original
    return {"samples_per_s": timer.rates, "test_elbo": metrics["test/elbo"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/binarized_mnist.npz"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="alternating plain/vaelab runs, against machine noise")
    args = parser.parse_args()
    data = load(args.data)
    rates = {"plain": [], "vaelab": []}
    elbos = {"plain": [], "vaelab": []}
    for _ in range(args.repeats):
        for name, run in (("plain", lambda: plain_loop(data, args.epochs, 100, args.seed)),
                          ("vaelab", lambda: our_loop(args.data, args.epochs, args.seed))):
            result = run()
            rates[name] += result["samples_per_s"][1:]  # the first epoch carries one-off warm-up costs
            elbos[name].append(result["test_elbo"])
    print(f"torch threads: {torch.get_num_threads()}, epochs: {args.epochs}, repeats: {args.repeats}, batch 100")
    print(f"{'loop':<8}{'samples/s (median epoch)':>26}{'(min, max)':>18}{'test ELBO (nats)':>20}")
    for name in rates:
        r = rates[name]
        print(f"{name:<8}{statistics.median(r):>26.0f}{f'({min(r):.0f}, {max(r):.0f})':>18}{statistics.fmean(elbos[name]):>20.2f}")
    ratio = statistics.median(rates["vaelab"]) / statistics.median(rates["plain"])
    print(f"ratio vaelab/plain: {ratio:.3f}")
    sys.exit(0 if math.isfinite(ratio) else 1)


if __name__ == "__main__":
    main()
