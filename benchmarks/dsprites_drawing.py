"""What drawing dSprites costs, to choose between drawing every image at the start and drawing each
batch when it is cut (``data.draw``; the choice is explained in ``vaelab.data.dsprites``).

For data=dsprites (64x64) and data=dsprites_small (32x32): the time and memory of drawing the whole
grid at once; per batch, drawing it against indexing a stored uint8 tensor; and a training step
(forward, backward, Adam) of the default VAE (MLP 200-200, latent 50) on such a batch, for scale.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/dsprites_drawing.py
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from vaelab.building import build_model
from vaelab.config import compose_config
from vaelab.data.factors import DSpritesFactors


def best_of(fn, repeats: int) -> float:
    """The fastest of ``repeats`` calls, in seconds (the machine is shared: the minimum is the cost)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whole", action="store_true", help="draw the whole 737,280-image grid (30 s, 2.8 GiB)")
    parser.add_argument("--sample", type=int, default=20000, help="images drawn to time the whole grid")
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}")
    print("| data | images | drawn/s | whole grid | uint8 memory | batch | draw batch | index batch | VAE step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for option, grid in (("dsprites", DSpritesFactors()), ("dsprites_small", DSpritesFactors(32, 6, 20, 16))):
        every = grid.factors_of(torch.randperm(len(grid), generator=torch.Generator().manual_seed(0)))
        if args.whole or len(grid) <= args.sample:
            whole = best_of(lambda: grid.draw(every), 1)
            rate = len(grid) / whole
        else:
            rate = args.sample / best_of(lambda: grid.draw(every[: args.sample]), 3)
            whole = len(grid) / rate
        stored = grid.draw(every[:4096])
        nbytes = len(grid) * stored[0].numel()
        with tempfile.TemporaryDirectory() as out:
            model = build_model(compose_config([f"data={option}"], out))
        optimizer = torch.optim.Adam(model.parameters())

        def step(x):
            loss, _ = model.step_metrics(x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        for batch in (64, 100):
            index = torch.randint(len(stored), (batch,), generator=torch.Generator().manual_seed(1))
            draw = best_of(lambda: grid.draw(every.index_select(0, index)), 50)
            lookup = best_of(lambda: stored.index_select(0, index), 50)
            x = stored.index_select(0, index).float()
            step(x)
            train_step = best_of(lambda: step(x), 20)
            print(
                f"| {option} | {len(grid):,} | {rate:,.0f} | {whole:.1f} s | {nbytes / 2**30:.2f} GiB | {batch} "
                f"| {draw * 1e3:.2f} ms | {lookup * 1e3:.3f} ms | {train_step * 1e3:.1f} ms |"
            )


if __name__ == "__main__":
    main()
