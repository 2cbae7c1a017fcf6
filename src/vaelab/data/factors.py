"""Ground truth of data sets made from known factors of variation, for disentanglement metrics.

``GroundTruth`` is the interface the metrics use: the factors' names and sizes, uniform samples of
factor indices, and the images the model sees for given factor indices. ``DSpritesFactors`` draws
the dSprites grid procedurally (``vaelab.data.dsprites`` explains the choice); ``TabulatedFactors``
looks the images up in a stored file (DeepMind's ``.npz``).

The drawing, in canvas coordinates ([0, 1] across the image, pixel centres at (j + 0.5) / size):
the shape's centre is at margin + pos * (1 - 2 margin) along the columns for pos_x and down the
rows for pos_y. Turned counter-clockwise (as seen) by the orientation and scaled by the scale, the
shape is the set of points p whose shape coordinates (u, v) = R(-orientation) (p - c) / (scale *
SIZE), with c the centre and v pointing up, satisfy
    square:  max(|u|, |v|) <= 1
    ellipse: (u / 1.25)^2 + (v / 0.6)^2 <= 1
    heart:   (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0 with (x, y) = (u, v) / 0.9 + (0, 0.118) (the classic
             heart curve, its bounding box centred)
and ``margin`` keeps every shape inside the canvas at every orientation. A pixel is on when its
centre is inside the shape: binary images, no anti-aliasing.
"""

from __future__ import annotations

import math
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from vaelab.errors import UserError


@runtime_checkable
class GroundTruth(Protocol):
    """The factors of variation of a data set and the images they make."""

    factor_names: list[str]
    factor_sizes: list[int]

    def sample_factors(self, n: int, generator: torch.Generator) -> Tensor:
        """[n, F] int64 factor indices, each factor uniform and independent (uniform over the grid),
        drawn with ``generator`` on its device."""
        ...

    def observations(self, factors: Tensor) -> Tensor:
        """[n, C, H, W] float32 in {0, 1} on the device of ``factors``: exactly what the model sees."""
        ...


class FactorGrid:
    """A full grid of factor indices: sampling, checks and the flat (row-major) index."""

    factor_names: list[str]
    factor_sizes: list[int]
    image_shape: tuple[int, int, int]

    def __len__(self) -> int:
        return math.prod(self.factor_sizes)

    def sample_factors(self, n: int, generator: torch.Generator) -> Tensor:
        device = generator.device
        columns = [torch.randint(size, (n,), generator=generator, device=device) for size in self.factor_sizes]
        return torch.stack(columns, dim=1)

    def check_factors(self, factors: Tensor) -> None:
        sizes = self.factor_sizes
        if factors.ndim != 2 or factors.shape[1] != len(sizes) or factors.dtype != torch.int64:
            raise UserError(
                f"factors must be an int64 tensor [n, {len(sizes)}] ({', '.join(self.factor_names)}), "
                f"got {factors.dtype} {list(factors.shape)}"
            )
        if len(factors) and ((factors < 0).any() or (factors >= torch.tensor(sizes, device=factors.device)).any()):
            raise UserError(f"factor indices must lie in 0..size-1 for the sizes {sizes}; got one outside")

    def flat_index(self, factors: Tensor) -> Tensor:
        """The row-major index of each row of factor indices in the grid (the last factor fastest)."""
        flat = torch.zeros(len(factors), dtype=torch.int64, device=factors.device)
        for column, size in enumerate(self.factor_sizes):
            flat = flat * size + factors[:, column]
        return flat

    def factors_of(self, flat: Tensor) -> Tensor:
        """The inverse of ``flat_index``."""
        columns = []
        for size in reversed(self.factor_sizes):
            columns.append(flat % size)
            flat = torch.div(flat, size, rounding_mode="floor")
        return torch.stack(columns[::-1], dim=1)

    def observations(self, factors: Tensor) -> Tensor:
        return self.images(factors).float()

    def images(self, factors: Tensor) -> Tensor:
        """[n, C, H, W] uint8 in {0, 1} on the device of ``factors``, for checked factor indices."""
        self.check_factors(factors)
        return self.draw(factors)

    def draw(self, factors: Tensor) -> Tensor:
        """``images`` without the checks (each of which waits for a GPU): for factor indices known
        to be valid, such as a split's own."""
        raise NotImplementedError

    def keep_on(self, device: torch.device) -> None:
        """Prepare to draw on ``device`` (``data.on_device``); nothing to do for a drawing."""


SHAPES = ("square", "ellipse", "heart")
DSPRITES_FACTORS = ["shape", "scale", "orientation", "pos_x", "pos_y"]
SIZE = 0.15  # a square's half side at scale 1, in canvas units: 19 pixels across at 64x64
ELLIPSE_AXES = (1.25, 0.6)
HEART_SCALE, HEART_SHIFT = 0.9, 0.118
# The farthest any shape reaches from its centre at scale 1, in units of SIZE: the heart's
# bounding-box corner (1.14, 1.12) * 0.9; a square's corner is sqrt(2) = 1.41.
REACH = 1.44


class DSpritesFactors(FactorGrid):
    """The dSprites grid (shape x scale x orientation x pos_x x pos_y) drawn procedurally: 3 shapes,
    ``num_scales`` scales linearly from 0.5 to 1, ``num_orientations`` angles 2 pi k / n over
    [0, 2 pi), ``num_positions`` positions per axis over [0, 1], on ``image_size`` x ``image_size``
    binary images (module docstring for the drawing). Deterministic: the same factors always give
    the same pixels. Images are drawn in chunks of ``chunk`` (bounded memory), vectorised in torch,
    on the device of the factors."""

    def __init__(
        self,
        image_size: int = 64,
        num_scales: int = 6,
        num_orientations: int = 40,
        num_positions: int = 32,
        chunk: int = 256,
    ):
        self.image_size, self.chunk = image_size, chunk
        self.image_shape = (1, image_size, image_size)
        self.factor_names = list(DSPRITES_FACTORS)
        self.factor_sizes = [len(SHAPES), num_scales, num_orientations, num_positions, num_positions]
        self.scales = torch.linspace(0.5, 1.0, num_scales, dtype=torch.float64)
        self.cos, self.sin = rotation_table(num_orientations)
        margin = REACH * SIZE + 0.5 / image_size
        self.centres = margin + torch.linspace(0.0, 1.0, num_positions, dtype=torch.float64) * (1 - 2 * margin)
        self.pixels = (torch.arange(image_size, dtype=torch.float64) + 0.5) / image_size
        self._tables: dict[torch.device, tuple[Tensor, ...]] = {}

    def tables(self, device: torch.device) -> tuple[Tensor, ...]:
        """The small look-up tables, float32 on ``device`` (copied there once)."""
        if device not in self._tables:
            self._tables[device] = tuple(
                t.to(device=device, dtype=torch.float32)
                for t in (self.scales, self.cos, self.sin, self.centres, self.pixels)
            )
        return self._tables[device]

    def draw(self, factors: Tensor) -> Tensor:
        size = self.image_size
        out = torch.empty(len(factors), 1, size, size, dtype=torch.uint8, device=factors.device)
        for start in range(0, len(factors), self.chunk):
            part = factors[start : start + self.chunk]
            out[start : start + len(part), 0] = self._draw(part)
        return out

    def _draw(self, factors: Tensor) -> Tensor:
        """[n, H, W] uint8 for a chunk of factor rows."""
        scales, cos, sin, centres, pixels = self.tables(factors.device)
        shape, scale, orientation, pos_x, pos_y = factors.unbind(1)
        # p - c per axis: dx over the columns [n, W], dy over the rows [n, H] (y up, rows go down).
        dx = pixels[None, :] - centres[pos_x][:, None]
        dy = centres[pos_y][:, None] - pixels[None, :]
        inv = 1.0 / (scales[scale] * SIZE)
        c, s = cos[orientation] * inv, sin[orientation] * inv
        out = torch.empty(len(factors), self.image_size, self.image_size, dtype=torch.uint8, device=factors.device)
        for k, name in enumerate(SHAPES):
            rows = (shape == k).nonzero().squeeze(1)
            if len(rows) == 0:
                continue
            ck, sk, dxk, dyk = c[rows, None], s[rows, None], dx[rows], dy[rows]
            # The rotation is separable: u = c dx + s dy, v = -s dx + c dy, one broadcast add per pixel.
            u = (ck * dxk)[:, None, :] + (sk * dyk)[:, :, None]
            v = (ck * dyk)[:, :, None] - (sk * dxk)[:, None, :]
            out[rows] = inside(name, u, v).to(torch.uint8)
        return out


def inside(name: str, u: Tensor, v: Tensor) -> Tensor:
    """Whether the points (u, v), in shape coordinates, lie in the shape (in place on u and v)."""
    if name == "square":
        return torch.maximum(u.abs_(), v.abs_()) <= 1
    if name == "ellipse":
        a, b = ELLIPSE_AXES
        return (u.div_(a).square_() + v.div_(b).square_()) <= 1
    x2 = u.div_(HEART_SCALE).square_()
    y = v.div_(HEART_SCALE).add_(HEART_SHIFT)
    r = (x2 + y.square()).sub_(1)
    return r.square().mul_(r) <= y.square().mul_(y).mul_(x2)


def rotation_table(n: int) -> tuple[Tensor, Tensor]:
    """cos and sin of 2 pi k / n, k = 0..n-1. When 4 divides n the quarter turns are exact: angle
    k + n/4 is (-sin, cos) of angle k bit for bit, so a square turned by pi/2, and any shape turned
    by pi, is drawn from the very same numbers, not ones rounded differently."""
    k = torch.arange(n, dtype=torch.float64)
    cos, sin = torch.cos(2 * math.pi * k / n), torch.sin(2 * math.pi * k / n)
    if n % 4 == 0:
        q = n // 4
        for turn in range(1, 4):
            part = slice(turn * q, (turn + 1) * q)
            prev = slice((turn - 1) * q, turn * q)
            cos[part], sin[part] = -sin[prev], cos[prev].clone()
    return cos, sin


class TabulatedFactors(FactorGrid):
    """Images stored with their factor indices (DeepMind's dSprites ``.npz``): ``images`` [N, C, H, W]
    uint8 and ``factors`` [N, F] int64. The grid's sizes are the largest index + 1 of each factor;
    ``complete`` tells whether every combination is there (the metrics need it: sampling is over the
    whole grid)."""

    def __init__(self, images: Tensor, factors: Tensor, factor_names: list[str], source: str = "the file"):
        self.factor_names = list(factor_names)
        self.factor_sizes = [int(m) + 1 for m in factors.max(0).values.tolist()]
        self.source, self.image_shape = source, tuple(images.shape[1:])
        row_of = torch.full((len(self),), -1, dtype=torch.int64)
        flat = self.flat_index(factors)
        row_of[flat] = torch.arange(len(factors))
        present = int((row_of >= 0).sum())
        if present != len(factors):
            raise UserError(
                f"{source} lists {len(factors) - present} factor combinations more than once; "
                "each image needs its own combination of factors"
            )
        self.complete = present == len(self)
        self.images_, self.row_of = images, row_of
        self._moved: dict[torch.device, tuple[Tensor, Tensor]] = {images.device: (images, row_of)}

    def keep_on(self, device: torch.device) -> None:
        """Keep a copy of the images on ``device`` (once, however many splits ask): factors there
        are looked up there (``data.on_device``)."""
        if device not in self._moved:
            self._moved[device] = (self.images_.to(device), self.row_of.to(device))

    def images(self, factors: Tensor) -> Tensor:
        self.check_factors(factors)
        if not self.complete and (self.row_of[self.flat_index(factors.cpu())] < 0).any():
            raise UserError(
                f"{self.source} has no image for some of the requested factor combinations: it holds "
                f"{int((self.row_of >= 0).sum())} of the {len(self)} of the grid {self.factor_sizes}"
            )
        return self.draw(factors)

    def draw(self, factors: Tensor) -> Tensor:
        images, row_of = self._moved.get(factors.device) or self._moved[self.images_.device]
        rows = row_of[self.flat_index(factors.to(row_of.device))]
        return images.index_select(0, rows).to(factors.device)
