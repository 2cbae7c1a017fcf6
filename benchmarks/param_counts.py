"""Parameter count of each size, for the MLP and conv networks, on each data set's image shape.

.venv/bin/python benchmarks/param_counts.py   # prints the README's markdown table
"""

from vaelab.config import compose_config

SHAPES = {"digits": "8x8", "binarized_mnist": "28x28", "cifar10": "3x32x32"}


def count(overrides: list[str]) -> int:
    from vaelab.building import instantiate_model

    model = instantiate_model(compose_config(overrides, "/tmp/unused").model)
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    print(
        "| size | latent | MLP hidden | conv channels | "
        + " | ".join(f"{net} {SHAPES[d]}" for net in ("mlp", "conv") for d in SHAPES)
        + " |"
    )
    print("|" + "---|" * (4 + 2 * len(SHAPES)))
    for size in ("small", "base", "large"):
        cfg = compose_config([f"size={size}"], "/tmp/unused")
        counts = [count([f"size={size}", f"net={net}", f"data={d}"]) for net in ("mlp", "conv") for d in SHAPES]
        print(
            f"| {size} | {cfg.size.latent_dim} | {list(cfg.size.hidden_dims)} | {list(cfg.size.channels)} | "
            + " | ".join(f"{c / 1e3:,.1f} K" if c < 1e6 else f"{c / 1e6:,.2f} M" for c in counts)
            + " |"
        )


if __name__ == "__main__":
    main()
