"""Training throughput of `train.py` against a plain PyTorch loop of the same model.

The model is the IWAE paper's VAE (tanh MLP 784-200-200-50, Bernoulli output) on fixed-binarized
MNIST, batch 100, Adam 1e-3. The plain loops are written here from scratch (no vaelab code): "plain" is the
textbook loop with torch's default Adam, "plain+fused" the same with Adam(fused=True), the
optimizer vaelab uses by default, so that line shows the framework's own overhead. Ours is
`vaelab.training.train` with its default callbacks (progress bar included) and CSV logger, exactly as
`python train.py data=binarized_mnist` runs it.

This machine's speed drifts by ±15% from one minute to the next, more than the difference being
measured, so the two are interleaved in one process: every 25 of our training steps, 25 steps
of each plain loop run (its own model, optimizer, data order and random stream; the global random
state is put back afterwards), and each side's time is summed over the epoch. The ratio reported
is the median over epochs of (our samples/s) / (plain samples/s), training batches only
(validation excluded), first epoch left out (one-off warm-up).

    .venv/bin/python benchmarks/throughput.py --data ../shared/data/binarized_mnist.npz --epochs 10
    .venv/bin/python benchmarks/throughput.py --epochs 10 model.compile=true    # the compiled step
"""

from __future__ import annotations

import argparse
import statistics
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


class PlainLoop:
    """The textbook PyTorch training loop of the same VAE, run a few steps at a time."""

    def __init__(self, data: dict[str, torch.Tensor], batch_size: int, seed: int, fused: bool = False):
        saved = torch.get_rng_state()
        torch.manual_seed(seed)
        self.enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 100))
        self.dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))
        self.opt = torch.optim.Adam([*self.enc.parameters(), *self.dec.parameters()], lr=1e-3, fused=fused)
        self.data, self.batch_size = data, batch_size
        self.batches = iter(())
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(saved)

    def neg_elbo(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=-1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
        return (rec + kl).mean()

    def steps(self, n: int) -> float:
        """Train ``n`` steps (a new shuffle at each epoch's start); returns the seconds taken."""
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng_state)
        x_train, batch_size = self.data["train"], self.batch_size
        start = time.perf_counter()
        for _ in range(n):
            indices = next(self.batches, None)
            if indices is None:
                self.batches = iter(torch.randperm(len(x_train)).split(batch_size)[: len(x_train) // batch_size])
                indices = next(self.batches)
            loss = self.neg_elbo(x_train[indices])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        seconds = time.perf_counter() - start
        self.rng_state = torch.get_rng_state()
        torch.set_rng_state(saved)
        return seconds

    @torch.no_grad()
    def test_elbo(self) -> float:
        return -statistics.fmean(self.neg_elbo(b).item() for b in self.data["test"].split(1000))


class PairedTimer(L.Callback):
    """Alternates ``chunk`` steps of ours with ``chunk`` steps of each plain loop, timing each, so
    all see the same machine; per epoch it records each loop's rate in samples per second."""

    def __init__(self, plain_loops: dict[str, PlainLoop], chunk: int = 25):
        self.plain_loops, self.chunk = plain_loops, chunk
        self.rates = {name: [] for name in [*plain_loops, "vaelab"]}
        self.our_seconds: list[float] = []  # our training time per epoch (the first holds compilation)
        self._ours_started = None

    def on_train_epoch_start(self, trainer, pl_module):
        self.seconds = dict.fromkeys(self.rates, 0.0)
        self.steps = dict.fromkeys(self.rates, 0)

    def _stop_ours(self, steps: int) -> None:
        if self._ours_started is not None:
            self.seconds["vaelab"] += time.perf_counter() - self._ours_started
            self.steps["vaelab"] += steps
            self._ours_started = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % self.chunk == 0:
            self._stop_ours(self.chunk if batch_idx else 0)
            for name, loop in self.plain_loops.items():
                self.seconds[name] += loop.steps(self.chunk)
                self.steps[name] += self.chunk
            self._ours_started = time.perf_counter()

    def on_validation_start(self, trainer, pl_module):
        if trainer.sanity_checking or self._ours_started is None:
            return
        self._stop_ours(trainer.num_training_batches - self.steps["vaelab"])
        for name in self.rates:
            self.rates[name].append(self.steps[name] * trainer.datamodule.batch_size / self.seconds[name])
        self.our_seconds.append(self.seconds["vaelab"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/binarized_mnist.npz"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra train.py overrides for our loop (e.g. logger=none)")
    args = parser.parse_args()

    import vaelab.building as building
    from vaelab.config import compose_config
    from vaelab.training import train

    data = load(args.data)
    timer = PairedTimer(
        {
            "plain": PlainLoop(data, batch_size=100, seed=args.seed),
            "plain+fused": PlainLoop(data, batch_size=100, seed=args.seed, fused=True),
        }
    )
    original = building.build_callbacks
    building.build_callbacks = lambda cfg: [*original(cfg), timer]
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(
            [
                "data=binarized_mnist",
                f"data.path={args.data}",
                f"trainer.max_epochs={args.epochs}",
                f"seed={args.seed}",
                *args.overrides,
            ],
            out,
        )
        metrics = train(cfg)
    building.build_callbacks = original

    rates = {name: r[1:] for name, r in timer.rates.items()}
    elbos = {name: loop.test_elbo() for name, loop in timer.plain_loops.items()} | {"vaelab": metrics["test/elbo"]}
    print(
        f"torch threads: {torch.get_num_threads()}, epochs: {args.epochs} (first left out), batch 100; "
        f"vaelab optimizer: {cfg.model.optimizer._target_} fused={cfg.model.optimizer.get('fused', False)}"
    )
    print(f"{'loop':<13}{'samples/s (median epoch)':>26}{'(min, max)':>18}{'test ELBO (nats)':>20}")
    for name, r in rates.items():
        print(f"{name:<13}{statistics.median(r):>26.0f}{f'({min(r):.0f}, {max(r):.0f})':>18}{elbos[name]:>20.2f}")
    later = statistics.median(timer.our_seconds[1:])
    print(
        f"vaelab's first epoch: {timer.our_seconds[0]:.1f} s of training against {later:.1f} s for a later one "
        f"(warm-up, torch.compile's compilation included: {timer.our_seconds[0] - later:.1f} s)"
    )
    for name in timer.plain_loops:
        ratios = [o / p for o, p in zip(rates["vaelab"], rates[name])]
        print(
            f"vaelab/{name} per epoch: {', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
