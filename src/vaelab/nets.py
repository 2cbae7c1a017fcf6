"""Encoder and decoder networks.

An encoder maps images [B, C, H, W] to ``num_params`` posterior parameters [B, P] (for a
diagonal Gaussian, P = 2L: mu and logvar; the posterior family reads them).
A decoder maps latents [..., L] to likelihood parameters [..., C, H, W] (logits or means).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from torch import Tensor, nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}: use one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def mlp(sizes: Sequence[int], act: str) -> nn.Sequential:
    """Linear layers with ``act`` between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Flatten -> hidden layers -> ``num_params`` outputs; the AEVB/IWAE-paper encoder."""

    def __init__(self, image_shape, num_params: int, hidden_dims: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.net = mlp([math.prod(image_shape), *hidden_dims], activation)
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(hidden_dims[-1], num_params)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.net(x.flatten(1))))


class MLPDecoder(nn.Module):
    """L -> hidden layers (reversed) -> C*H*W outputs reshaped to the image."""

    def __init__(self, image_shape, latent_dim: int, hidden_dims: Sequence[int], activation: str = "tanh"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp([latent_dim, *reversed(hidden_dims), math.prod(image_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.image_shape)


def conv_output_size(size: int) -> int:
    """Spatial size after a 3x3 convolution with stride 2 and padding 1."""
    return (size - 1) // 2 + 1


class ConvEncoder(nn.Module):
    """Stride-2 3x3 convolutions (one per entry of ``channels``) -> linear head to ``num_params``."""

    def __init__(self, image_shape, num_params: int, channels: Sequence[int], activation: str = "relu"):
        super().__init__()
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            c, h, w = c_out, conv_output_size(h), conv_output_size(w)
        self.net = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Linear(c * h * w, num_params)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x))


class ConvDecoder(nn.Module):
    """Linear to the smallest feature map, then stride-2 transposed convolutions that retrace
    the encoder's spatial sizes exactly (any H, W, not only powers of two)."""

    def __init__(self, image_shape, latent_dim: int, channels: Sequence[int], activation: str = "relu"):
        super().__init__()
        c_img, h, w = image_shape
        sizes = [(h, w)]
        for _ in channels:
            sizes.append((conv_output_size(sizes[-1][0]), conv_output_size(sizes[-1][1])))
        self.start_shape = (channels[-1], *sizes[-1])
        self.fc = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start_shape)), ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        channels_out = [*reversed(channels[:-1]), c_img]
        for i, c_out in enumerate(channels_out):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            # A 3x3 stride-2 transposed conv gives 2*in - 1 + output_padding.
            pad = (h_out - 2 * h_in + 1, w_out - 2 * w_in + 1)
            c_in = channels[-1 - i]
            layers.append(nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=pad))
            if i < len(channels_out) - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.start_shape)
        out = self.net(h)
        return out.view(*lead, *out.shape[1:])


def build_networks(
    net: dict, image_shape, latent_dim: int, num_params: int | None = None
) -> tuple[nn.Module, nn.Module]:
    """Encoder (to ``num_params`` outputs, default 2L) and decoder for
    ``net`` = {kind: mlp|conv, hidden_dims|channels, activation}."""
    kind = net["kind"]
    num_params = num_params or 2 * latent_dim
    widths = list(net["hidden_dims"] if kind == "mlp" else net.get("channels", []))
    if kind == "mlp":
        return (
            MLPEncoder(image_shape, num_params, widths, net["activation"]),
            MLPDecoder(image_shape, latent_dim, widths, net["activation"]),
        )
    if kind == "conv":
        return (
            ConvEncoder(image_shape, num_params, widths, net["activation"]),
            ConvDecoder(image_shape, latent_dim, widths, net["activation"]),
        )
    raise ValueError(f"unknown net kind {kind!r}: use net=mlp or net=conv")
