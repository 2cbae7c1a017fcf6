"""Time of the importance-sampled NLL with k samples, three ways:
- batched: examples in batches, the k samples in chunks (eval.py's defaults: 100 and 20);
- one example at a time, its k samples in one vectorised pass (chunk 1000);
- one example and one sample at a time (the loop a first implementation writes), on fewer examples.

    .venv/bin/python benchmarks/nll_speed.py CKPT --k 5000 --examples 200 --naive-examples 2
"""

from __future__ import annotations

import argparse
import time

import torch
from omegaconf import OmegaConf

from vaelab.building import instantiate_plain
from vaelab.checkpoints import load_checkpoint, model_from_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ckpt")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--examples", type=int, default=200)
    parser.add_argument("--naive-examples", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--chunk", type=int, default=20)
    args = parser.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    model = model_from_checkpoint(checkpoint).eval()
    datamodule = instantiate_plain(OmegaConf.create(checkpoint["vaelab"]["config"]["data"]))
    datamodule.prepare()
    split = datamodule.fixed_eval_split("test")
    x = split.images[: args.examples].float() / split.levels
    print(f"torch threads {torch.get_num_threads()}, k={args.k}, {len(x)} test examples")
    ways = {
        "batched": (x, args.batch_size, args.chunk),
        "one example at a time": (x, 1, 1000),
        "one example, one sample at a time": (x[: args.naive_examples], 1, 1),
    }
    per_example, nll = {}, {}
    with torch.no_grad():
        for name, (data, batch_size, chunk) in ways.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            bound = torch.cat([model.iwae_bound(b, args.k, chunk) for b in data.split(batch_size)])
            per_example[name] = (time.perf_counter() - start) / len(data)
            nll[name] = -bound.mean().item()
    for name, seconds in per_example.items():
        n = len(ways[name][0])
        print(
            f"{name:<34} {seconds * 1e3:9.1f} ms/example over {n:>4} examples  "
            f"(10,000 test images: {seconds * 1e4 / 60:7.1f} min)  mean NLL {nll[name]:.2f}"
        )
    for name in list(per_example)[1:]:
        print(f"batched is {per_example[name] / per_example['batched']:.1f}x faster than {name}")


if __name__ == "__main__":
    main()
