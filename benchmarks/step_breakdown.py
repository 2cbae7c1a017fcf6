"""Where a training step's time goes: the model's own computation against the plain loop's,
without Lightning's loop, data loading or our bookkeeping around the step.

Times, interleaved in one process, 200 steps at a time on one fixed batch of 100 fixed-binarized
MNIST images: (a) the textbook loop's step of ``throughput.py`` with fused Adam, (b) our model's
``step_metrics`` + backward + the same fused Adam (eager), (c) the same with ``model.compile=true``
(compiled once before timing). Whatever (b) costs over (a) is the model code's share of the gap
that ``throughput.py`` reports; the rest of that gap is the loop around the step.

    .venv/bin/python benchmarks/step_breakdown.py --data ../shared/data/binarized_mnist.npz
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from throughput import ROOT, PlainLoop, load


def time_steps(step, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/binarized_mnist.npz"))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from vaelab.building import build_model
    from vaelab.config import compose_config

    data = load(args.data)
    plain = PlainLoop(data, batch_size=100, seed=0, fused=True)
    flat = data["train"][:100]
    images = flat.view(100, 1, 28, 28)

    def plain_step():
        loss = plain.neg_elbo(flat)
        plain.opt.zero_grad(set_to_none=True)
        loss.backward()
        plain.opt.step()

    def our_step(model, optimizer):
        def step():
            loss, _ = model.step_metrics(images)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    steps = {"plain+fused": plain_step}
    with tempfile.TemporaryDirectory() as out:
        for name, compiled in (("ours, eager", "false"), ("ours, compiled", "true")):
            cfg = compose_config(["data=binarized_mnist", f"data.path={args.data}", f"model.compile={compiled}"], out)
            torch.manual_seed(0)
            model = build_model(cfg)
            steps[name] = our_step(model, torch.optim.Adam(model.parameters(), lr=1e-3, fused=True))
    for step in steps.values():
        time_steps(step, 50)  # warm-up (and compilation)
    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name].append(time_steps(step, 200))
    print(f"torch threads: {torch.get_num_threads()}, batch 100, median of {args.rounds} rounds of 200 steps")
    base = statistics.median(times["plain+fused"])
    for name, t in times.items():
        print(f"{name:<16}{statistics.median(t):6.2f} ms a step   plain+fused / it: {base / statistics.median(t):.3f}")


if __name__ == "__main__":
    main()
