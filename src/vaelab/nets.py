"""Encoder and decoder networks.

An encoder maps images [B, C, H, W] to ``num_params`` posterior parameters [B, P] (for a
diagonal Gaussian, P = 2L: mu and logvar; the posterior family reads them).
A decoder maps latents [..., L] to likelihood parameters [..., C, H, W] (logits or means).

``net=betavae_conv`` is the conv pair with 4x4 kernels and a dense layer: the network of the
beta-VAE papers for 64x64 images as the issue gives it, four stride-2 convolutions of 32 channels
and one 256-unit layer (ReLU), decoded by the mirror image. Burgess et al. (2018) had two 256-unit
layers (``net.dense=[256,256]``); disentanglement_lib's conv encoder has 32, 32, 64, 64 channels
(``net.channels=[32,32,64,64]``) and one 256-unit layer.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import PositiveInt
from torch import Tensor, nn

from vaelab.checks import and_list, require
from vaelab.settings import Settings, setting, validate

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "silu": nn.SiLU}
Activation = Literal[tuple(ACTIVATIONS)]
ACTIVATION_CHOICES = f"one of {sorted(ACTIVATIONS)}"


class MLPSettings(Settings):
    """``net=mlp``: fully connected encoder and decoder."""

    kind: Literal["mlp"] = setting("mlp", "the kind of network")
    hidden_dims: list[PositiveInt] = setting(..., "hidden layer widths (size.hidden_dims)", min_length=1)
    activation: Activation = setting("tanh", "the nonlinearity", says=ACTIVATION_CHOICES)


class ConvSettings(Settings):
    """``net=conv``: stride-2 convolutions and their mirror image, optionally with dense layers."""

    kind: Literal["conv"] = setting("conv", "the kind of network")
    channels: list[PositiveInt] = setting(..., "channels of each stride-2 convolution (size.channels)", min_length=1)
    activation: Activation = setting("relu", "the nonlinearity", says=ACTIVATION_CHOICES)
    kernel: Literal[3, 4] = setting(3, "3 (padding 1) or 4 (padding 1, exact halving)")
    dense: list[PositiveInt] = setting([], "widths of dense layers after the convolutions")


NETS: dict[str, type[Settings]] = {"mlp": MLPSettings, "conv": ConvSettings}


def check_net(net: Any, image_shape: Sequence[int]) -> Settings:
    """The ``net`` node against the schema of its kind, and images large enough for a conv net's
    stride-2 convolutions (a 4x4 kernel halves the size, so n convolutions need 2^n pixels)."""
    kind = net.get("kind")
    choices = and_list(list(NETS), "or")
    require(kind in NETS, f"net.kind must be {choices}, got {kind!r}; choose net={choices.replace(' or ', ' or net=')}")
    schema = NETS[kind]
    takes = and_list([key for key in schema.model_fields if key != "kind"])

    def unknown(key: str) -> str:
        other = next((name for name, option in NETS.items() if key in option.model_fields), None)
        if other:
            return (
                f"net.{key} has no effect with net.kind={kind} (it takes {takes}); drop net.{key} or choose net={other}"
            )
        return f"net.{key} is not a setting of net.kind={kind} (it takes {takes}); drop it"

    settings = validate(schema, net, "net", unknown)
    if kind == "conv":
        smallest = 2 ** len(settings.channels) if settings.kernel == 4 else 1
        require(
            min(image_shape[1:]) >= smallest,
            f"the net's {len(settings.channels)} stride-2 4x4 convolutions need images of at least "
            f"{smallest}x{smallest}, but data.image_shape is {list(image_shape)}; use larger images or fewer "
            "net.channels",
        )
    return settings


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

    def __init__(
        self, image_shape: Sequence[int], num_params: int, hidden_dims: Sequence[int], activation: str = "tanh"
    ):
        super().__init__()
        self.net = mlp([math.prod(image_shape), *hidden_dims], activation)
        self.act = ACTIVATIONS[activation]()
        self.head = nn.Linear(hidden_dims[-1], num_params)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.net(x.flatten(1))))


class MLPDecoder(nn.Module):
    """L -> hidden layers (reversed) -> C*H*W outputs reshaped to the image."""

    def __init__(
        self, image_shape: Sequence[int], latent_dim: int, hidden_dims: Sequence[int], activation: str = "tanh"
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp([latent_dim, *reversed(hidden_dims), math.prod(image_shape)], activation)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z).unflatten(-1, self.image_shape)


def conv_output_size(size: int, kernel: int = 3) -> int:
    """Spatial size after a stride-2 convolution with padding 1: ceil(size / 2) for a 3x3 kernel,
    floor(size / 2) for a 4x4 one."""
    return (size + 2 - kernel) // 2 + 1


def conv_sizes(image_shape: Sequence[int], num_convs: int, kernel: int = 3) -> list[tuple[int, int]]:
    """(H, W) of the image and after each of ``num_convs`` stride-2 convolutions."""
    sizes = [tuple(image_shape[1:])]
    for _ in range(num_convs):
        h, w = sizes[-1]
        sizes.append((conv_output_size(h, kernel), conv_output_size(w, kernel)))
    if min(sizes[-1]) < 1:
        raise ValueError(
            f"{num_convs} stride-2 {kernel}x{kernel} convolutions leave nothing of a {image_shape[1]}x{image_shape[2]} "
            f"image; they need at least {2**num_convs}x{2**num_convs}"
        )
    return sizes


class ConvEncoder(nn.Module):
    """Stride-2 convolutions (one per entry of ``channels``, ``kernel`` 3 or 4, padding 1) ->
    flattened -> dense layers of ``dense`` units (none by default) -> linear head to ``num_params``.
    The flattened size is computed from the image's, so any H, W that the convolutions leave at
    least 1x1 of will do."""

    def __init__(
        self,
        image_shape: Sequence[int],
        num_params: int,
        channels: Sequence[int],
        activation: str = "relu",
        kernel: int = 3,
        dense: Sequence[int] = (),
    ):
        super().__init__()
        c = image_shape[0]
        h, w = conv_sizes(image_shape, len(channels), kernel)[-1]
        layers: list[nn.Module] = []
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, kernel, stride=2, padding=1), ACTIVATIONS[activation]()]
            c = c_out
        layers.append(nn.Flatten())
        width = c * h * w
        for units in dense:
            layers += [nn.Linear(width, units), ACTIVATIONS[activation]()]
            width = units
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_params)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x))


class ConvDecoder(nn.Module):
    """The encoder's mirror: dense layers (``dense`` reversed) to the smallest feature map, then
    stride-2 transposed convolutions that retrace the encoder's spatial sizes exactly (any H, W,
    not only powers of two)."""

    def __init__(
        self,
        image_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int],
        activation: str = "relu",
        kernel: int = 3,
        dense: Sequence[int] = (),
    ):
        super().__init__()
        c_img = image_shape[0]
        sizes = conv_sizes(image_shape, len(channels), kernel)
        self.start_shape = (channels[-1], *sizes[-1])
        widths = [latent_dim, *reversed(dense), math.prod(self.start_shape)]
        fc: list[nn.Module] = []
        for n_in, n_out in itertools.pairwise(widths):
            fc += [nn.Linear(n_in, n_out), ACTIVATIONS[activation]()]
        self.fc = nn.Sequential(*fc)
        layers: list[nn.Module] = []
        channels_out = [*reversed(channels[:-1]), c_img]
        for i, c_out in enumerate(channels_out):
            (h_in, w_in), (h_out, w_out) = sizes[-1 - i], sizes[-2 - i]
            # A stride-2 transposed conv with padding 1 gives 2*in + kernel - 4 + output_padding.
            pad = (h_out - 2 * h_in - kernel + 4, w_out - 2 * w_in - kernel + 4)
            c_in = channels[-1 - i]
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel, stride=2, padding=1, output_padding=pad))
            if i < len(channels_out) - 1:
                layers.append(ACTIVATIONS[activation]())
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z.reshape(-1, z.shape[-1])).view(-1, *self.start_shape)
        out = self.net(h)
        return out.view(*lead, *out.shape[1:])


def build_networks(
    net: dict, image_shape: Sequence[int], latent_dim: int, num_params: int | None = None
) -> tuple[nn.Module, nn.Module]:
    """Encoder (to ``num_params`` outputs, default 2L) and decoder for
    ``net`` = {kind: mlp|conv, hidden_dims|channels, activation}; a conv net may also give
    ``kernel`` (3, the default, or 4) and ``dense`` (widths of dense layers after the convolutions)."""
    kind = net.get("kind")
    require(kind in NETS, f"net.kind must be {and_list(list(NETS), 'or')}, got {kind!r}")
    settings = validate(NETS[kind], net, "net")  # the schema's defaults for what ``net`` leaves out
    num_params = num_params or 2 * latent_dim
    if isinstance(settings, MLPSettings):
        widths = list(settings.hidden_dims)
        return (
            MLPEncoder(image_shape, num_params, widths, settings.activation),
            MLPDecoder(image_shape, latent_dim, widths, settings.activation),
        )
    widths, kernel, dense = list(settings.channels), settings.kernel, list(settings.dense)
    return (
        ConvEncoder(image_shape, num_params, widths, settings.activation, kernel, dense),
        ConvDecoder(image_shape, latent_dim, widths, settings.activation, kernel, dense),
    )
