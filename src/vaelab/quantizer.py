"""The vector quantizer of VQ-VAE (van den Oord et al. 2017), kept healthy.

z_e [B, D, H, W] -> z_q [B, D, H, W]: each of the B*H*W vectors is replaced by its nearest
codebook vector e_k; the gradient passes straight through to the encoder. Losses (means per
element, so no weight depends on the batch size):
  codebook   |sg[z_e] - e|^2      (only with update="loss"; "ema" moves the codebook by
                                   exponential moving averages instead, with Laplace smoothing)
  commitment beta * |z_e - sg[e]|^2
Health: k-means initialisation from the first batch, and dead-code restart (codes whose usage
average falls below ``dead_threshold`` are re-seeded from distinct recent encoder outputs).
Under DDP every statistic (EMA counts and sums, k-means data, restart candidates) is taken over
all processes' data, and random choices use a generator with the same seed on every process, so
every process holds the same codebook, equal to a single process on the same global batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.settings import Settings, setting


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: Tensor) -> Tensor:
    if distributed():
        dist.all_reduce(t)
    return t


def all_gather_rows(x: Tensor) -> Tensor:
    """Concatenate every process's rows [N_r, D] in rank order (N_r may differ)."""
    if not distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    largest = int(max(s.item() for s in sizes))
    padded = torch.zeros(largest, x.shape[1], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    gathered = [torch.zeros_like(padded) for _ in sizes]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(s.item())] for g, s in zip(gathered, sizes)])


def kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre is a data row drawn with
    probability proportional to its squared distance from the centres so far."""
    first = torch.randint(len(x), (1,), generator=generator)
    centres = [x[first.item()]]
    closest = (x - centres[0]).pow(2).sum(1)
    for _ in range(k - 1):
        weights = closest.cpu().double()
        if weights.sum() <= 0:  # fewer distinct rows than centres: repeat rows
            weights = torch.ones_like(weights)
        pick = torch.multinomial(weights, 1, generator=generator).item()
        centres.append(x[pick])
        closest = torch.minimum(closest, (x - x[pick]).pow(2).sum(1))
    return torch.stack(centres).clone()


def kmeans(x: Tensor, k: int, iterations: int, generator: torch.Generator) -> Tensor:
    """Lloyd's k-means from k-means++ seeds on rows of x [N, D] -> centres [k, D]; an empty
    cluster keeps its centre."""
    centres = kmeans_plus_plus(x, k, generator)
    for _ in range(iterations):
        assign = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, x)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres


class CodebookSettings(Settings):
    """The settings of a learned codebook: VectorQuantizer's and each stage of the residual quantizer's."""

    num_codes: int = setting(512, "K, the codebook's size", ge=2, message="{key} (K) must be ≥ 2, got {value!r}")
    code_dim: int = setting(64, "D, a code's dimension", ge=1)
    beta: float = setting(0.25, "the commitment loss's weight", ge=0)
    update: Literal["ema", "loss"] = setting("ema", "codebook learning: moving averages, or the paper's codebook loss")
    decay: float = setting(0.99, "the EMA updates' rate", gt=0, lt=1)
    epsilon: float = setting(1e-5, "the EMA counts' Laplace smoothing", gt=0)
    kmeans_init: bool = setting(True, "initialise the codebook by k-means on the first batch")
    kmeans_iterations: int = setting(10, "Lloyd iterations of that k-means", ge=0)
    restart_dead: bool = setting(True, "move dead codes onto encoder outputs")
    dead_threshold: float = setting(0.03, "a code is dead below this fraction of a fair share of use", ge=0)
    usage_decay: float = setting(0.99, "the usage averages' decay", gt=0, lt=1)
    seed: int = setting(0, "the k-means and restart random stream (the run's seed)")


class VectorQuantizer(nn.Module):
    index_shape: tuple[int, ...] = ()  # a code map holds one index per position: [B, H, W]
    logged: tuple[str, ...] = ()  # terms of the forward's that the model logs beside its own

    class Settings(CodebookSettings):
        cosine: bool = setting(False, "cosine-similarity codebook (l2-normalised codes and encodings)")
        lookup_dim: int | None = setting(None, "match codes in a projection of this size", ge=1, says="null or ≥ 1")

    def __init__(
        self,
        num_codes: int = Settings.default("num_codes"),
        code_dim: int = Settings.default("code_dim"),
        beta: float = Settings.default("beta"),
        update: str = Settings.default("update"),
        decay: float = Settings.default("decay"),
        epsilon: float = Settings.default("epsilon"),
        kmeans_init: bool = Settings.default("kmeans_init"),
        kmeans_iterations: int = Settings.default("kmeans_iterations"),
        restart_dead: bool = Settings.default("restart_dead"),
        dead_threshold: float = Settings.default("dead_threshold"),
        usage_decay: float = Settings.default("usage_decay"),
        cosine: bool = Settings.default("cosine"),
        lookup_dim: int | None = Settings.default("lookup_dim"),
        seed: int = Settings.default("seed"),
    ):
        super().__init__()
        self.num_codes, self.code_dim, self.beta, self.update = num_codes, code_dim, beta, update
        self.decay, self.epsilon, self.usage_decay = decay, epsilon, usage_decay
        self.kmeans_init, self.kmeans_iterations = kmeans_init, kmeans_iterations
        self.restart_dead, self.dead_threshold, self.cosine = restart_dead, dead_threshold, cosine
        self.seed = seed
        lookup = lookup_dim or code_dim
        # Low-dimensional lookup (Yu et al. 2022): match and store codes in ``lookup`` dimensions.
        self.project_in = nn.Linear(code_dim, lookup) if lookup != code_dim else nn.Identity()
        self.project_out = nn.Linear(lookup, code_dim) if lookup != code_dim else nn.Identity()
        codebook = torch.randn(num_codes, lookup) / math.sqrt(lookup)
        if update == "loss":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_counts", torch.ones(num_codes))
            self.register_buffer("ema_sums", codebook.clone())
        # Average fraction of the vectors assigned to each code, times K (1 = a fair share).
        self.register_buffer("usage", torch.ones(num_codes))
        self.register_buffer("initialised", torch.tensor(not kmeans_init))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # Codes restarted by the latest training forward (for the model to reset their optimizer state).
        self.restarted = torch.zeros(0, dtype=torch.long)

    def generator(self) -> torch.Generator:
        """The same random stream on every process (seeded by the step), for k-means and restarts."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + int(self.steps))

    def codes(self) -> Tensor:
        return F.normalize(self.codebook, dim=1) if self.cosine else self.codebook

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code for each row [N, lookup] -> [N]."""
        codes = self.codes()
        distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ codes.T + codes.pow(2).sum(1)[None]
        return distances.argmin(1)

    def forward(self, z_e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """z_e [B, D, H, W] -> (z_q with straight-through gradient [B, D, H, W], terms). Under DDP
        every process must call it (its statistics are summed over processes, also in eval)."""
        batch, _, height, width = z_e.shape
        flat = self.project_in(z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]))  # [N, lookup]
        if self.cosine:
            flat = F.normalize(flat, dim=1)
        if self.training and not bool(self.initialised):
            self._kmeans_initialise(flat.detach())
        indices = self.nearest(flat.detach())
        quantized = self.codes()[indices]  # [N, lookup]
        commitment = F.mse_loss(flat, quantized.detach())
        codebook_loss = F.mse_loss(quantized, flat.detach()) if self.update == "loss" else flat.new_zeros(())
        # Code counts over every process's vectors, so perplexity and codes_used describe the
        # global batch (the mean of per-process values would understate both).
        if self.training:
            counts = self._update(flat.detach(), indices)
        else:
            counts = all_reduce_sum(torch.bincount(indices, minlength=self.num_codes).float())
        # Straight-through: the forward value is the code, the gradient is the identity on z_e.
        straight = flat + (quantized - flat).detach()
        z_q = self.project_out(straight).view(batch, height, width, -1).permute(0, 3, 1, 2)
        probs = counts / counts.sum()
        return z_q.to(z_e.dtype), {
            "indices": indices.view(batch, height, width),
            "vq_loss": codebook_loss + self.beta * commitment,
            "commitment": commitment,
            "codebook_loss": codebook_loss,
            "perplexity": torch.exp(-(probs * torch.log(probs + 1e-10)).sum()),
            "codes_used": (counts > 0).float().mean(),
        }

    @torch.no_grad()
    def indices(self, z_e: Tensor) -> Tensor:
        """Nearest-code map [B, H, W] for z_e [B, D, H, W], never updating the codebook (for a
        frozen quantizer, whatever its train/eval mode)."""
        batch, _, height, width = z_e.shape
        flat = self.project_in(z_e.float().permute(0, 2, 3, 1).reshape(-1, z_e.shape[1]))
        if self.cosine:
            flat = F.normalize(flat, dim=1)
        return self.nearest(flat).view(batch, height, width)

    @torch.no_grad()
    def lookup(self, indices: Tensor) -> Tensor:
        """Code maps [B, H, W] -> z_q [B, D, H, W] (for decoding samples of a prior)."""
        return self.project_out(self.codes()[indices]).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _kmeans_initialise(self, flat: Tensor) -> None:
        data = all_gather_rows(flat)
        centres = kmeans(data, self.num_codes, self.kmeans_iterations, self.generator())
        self.codebook.data.copy_(centres)
        if self.update == "ema":
            self.ema_sums.copy_(centres)
            self.ema_counts.fill_(1.0)
        self.initialised.fill_(True)

    @torch.no_grad()
    def _update(self, flat: Tensor, indices: Tensor) -> Tensor:
        """Usage, EMA codebook and restarts from this step's vectors; returns the code counts
        summed over processes [K]."""
        self.restarted = indices.new_zeros(0)
        one_hot_counts = torch.bincount(indices, minlength=self.num_codes).to(flat.dtype)
        sums = torch.zeros(self.num_codes, flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(
            0, indices, flat
        )
        stats = all_reduce_sum(torch.cat([one_hot_counts[:, None], sums], 1))
        counts, sums = stats[:, 0], stats[:, 1:]
        total = counts.sum()
        self.usage.lerp_(counts / total * self.num_codes, 1 - self.usage_decay)
        if self.update == "ema":
            self.ema_counts.lerp_(counts, 1 - self.decay)
            self.ema_sums.lerp_(sums, 1 - self.decay)
            # Laplace smoothing keeps a code that lost its vectors from dividing by zero.
            n = self.ema_counts.sum()
            smoothed = (self.ema_counts + self.epsilon) / (n + self.num_codes * self.epsilon) * n
            self.codebook.copy_(self.ema_sums / smoothed[:, None])
        if self.restart_dead:
            self._restart(flat)
        self.steps += 1
        return counts

    @torch.no_grad()
    def _restart(self, flat: Tensor) -> None:
        dead = (self.usage < self.dead_threshold).nonzero().squeeze(1)
        if len(dead) == 0:
            return
        data = all_gather_rows(flat)
        # Distinct outputs, so no two restarted codes start on the same vector (and then split
        # its vectors between them); with fewer outputs than dead codes the rest wait a batch.
        pick = torch.randperm(len(data), generator=self.generator())[: len(dead)].to(data.device)
        dead = dead[: len(pick)]
        self.restarted = dead
        self.codebook.data[dead] = data[pick]
        self.usage[dead] = 1.0
        if self.update == "ema":
            self.ema_sums[dead] = data[pick]
            self.ema_counts[dead] = 1.0

    def dead_codes(self) -> int:
        return int((self.usage < self.dead_threshold).sum())

    def codebooks(self) -> list[VectorQuantizer]:
        """The learned codebooks (whose restarted rows the model resets in its optimizer)."""
        return [self]


class FiniteScalarQuantizer(nn.Module):
    """Finite scalar quantization (Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made
    Simple"): z_e [B, d, H, W] with d = len(levels) channels; channel i is bounded by
    f(z) = tanh(z + s_i) * h_i - o_i to the open interval around the L_i integers of its grid
    (h_i = (L_i - 1)(1 + 1e-3) / 2; o_i = 1/2 and s_i = atanh(o_i / h_i) centre an even L_i), rounded
    with a straight-through gradient, and scaled to [-1, 1] by L_i // 2 (section 3, eq. 1). The
    codebook is the implicit product grid of prod_i L_i codes: nothing is learned, so there is no
    codebook or commitment loss and no code restarts. ``usage`` and ``dead_codes`` measure its use
    as VectorQuantizer's do. The index of a code is its mixed-radix number, sum_i digit_i * prod_{j<i} L_j,
    with digit_i in {0, ..., L_i - 1}."""

    index_shape: tuple[int, ...] = ()
    logged: tuple[str, ...] = ()

    class Settings(Settings):
        levels: list[int] = setting([8, 5, 5, 5], "L_i, the levels of each channel; K = their product", min_length=1)
        dead_threshold: float = setting(0.03, "a code is dead below this fraction of a fair share of use", ge=0)
        usage_decay: float = setting(0.99, "the usage averages' decay", gt=0, lt=1)

    def __init__(
        self,
        levels: list[int] = Settings.default("levels"),  # noqa: B008 (never mutated)
        dead_threshold: float = Settings.default("dead_threshold"),
        usage_decay: float = Settings.default("usage_decay"),
    ):
        super().__init__()
        self.levels = [int(n) for n in levels]
        self.code_dim, self.num_codes = len(self.levels), math.prod(self.levels)
        self.dead_threshold, self.usage_decay = dead_threshold, usage_decay
        radix = torch.tensor(self.levels, dtype=torch.long)
        self.register_buffer("radix", radix, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([radix.new_ones(1), radix[:-1]]), 0), persistent=False)
        self.register_buffer("usage", torch.ones(self.num_codes))
        self.restarted = torch.zeros(0, dtype=torch.long)  # none: the grid has nothing to restart

    def bound(self, z: Tensor) -> Tensor:
        """f(z) [..., d]: each channel squashed into the interval whose rounding gives its L_i integers."""
        levels = self.radix.to(z.dtype)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = (self.radix % 2 == 0).to(z.dtype) / 2
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def quantize(self, flat: Tensor) -> Tensor:
        """[N, d] -> the grid's integers in the bounded space, with a straight-through gradient."""
        bounded = self.bound(flat)
        return bounded + (bounded.round() - bounded).detach()

    def to_indices(self, grid: Tensor) -> Tensor:
        """Grid integers [N, d] -> code indices [N]."""
        digits = grid.round().long() + self.radix // 2
        return (digits * self.basis).sum(-1)

    def forward(self, z_e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """z_e [B, d, H, W] -> (z_q [B, d, H, W] in [-1, 1], with straight-through gradient, terms)."""
        batch, _, height, width = z_e.shape
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        grid = self.quantize(flat)
        indices = self.to_indices(grid.detach())
        counts = all_reduce_sum(torch.bincount(indices, minlength=self.num_codes).float())
        if self.training:
            with torch.no_grad():
                self.usage.lerp_(counts / counts.sum() * self.num_codes, 1 - self.usage_decay)
        z_q = (grid / (self.radix // 2).to(grid.dtype)).view(batch, height, width, -1).permute(0, 3, 1, 2)
        probs = counts / counts.sum()
        zero = flat.new_zeros(())
        return z_q.to(z_e.dtype), {
            "indices": indices.view(batch, height, width),
            "vq_loss": zero,
            "commitment": zero,
            "codebook_loss": zero,
            "perplexity": torch.exp(-(probs * torch.log(probs + 1e-10)).sum()),
            "codes_used": (counts > 0).float().mean(),
        }

    @torch.no_grad()
    def indices(self, z_e: Tensor) -> Tensor:
        """Code maps [B, H, W] for z_e [B, d, H, W]."""
        batch, _, height, width = z_e.shape
        flat = z_e.float().permute(0, 2, 3, 1).reshape(-1, self.code_dim)
        return self.to_indices(self.bound(flat).round()).view(batch, height, width)

    @torch.no_grad()
    def lookup(self, indices: Tensor) -> Tensor:
        """Code maps [B, H, W] -> z_q [B, d, H, W]."""
        digits = indices.unsqueeze(-1) // self.basis % self.radix  # [B, H, W, d]
        half = self.radix // 2
        return ((digits - half).float() / half.float()).permute(0, 3, 1, 2)

    def dead_codes(self) -> int:
        return int((self.usage < self.dead_threshold).sum())

    def codebooks(self) -> list[VectorQuantizer]:
        return []


class ResidualVectorQuantizer(nn.Module):
    """Residual vector quantization (Zeghidour et al. 2021, SoundStream, algorithm 1; Lee et al.
    2022, RQ-VAE, section 3.1): Q codebooks of K codes quantize in turn what the previous ones left,

        r_0 = z_e,   k_i = argmin_k |r_{i-1} - e^(i)_k|,   r_i = r_{i-1} - e^(i)_{k_i},   z_q = sum_i e^(i)_{k_i},

    so each added codebook refines the approximation of z_e. The straight-through gradient is
    taken once, for the sum (the decoder's gradient reaches z_e as the identity); the commitment
    of stage i is RQ-VAE's |z_e - sg(sum_{j<=i} e^(j))|^2 (eq. 6), which is |r_{i-1} - sg(e^(i))|^2
    because r_{i-1} = z_e - sg(sum_{j<i} e^(j)). Each stage is a VectorQuantizer with its own
    codebook (EMA updates, k-means initialisation on its residuals, dead-code restarts, the
    stream seed + i); the losses are summed over stages, the health terms (perplexity, codes
    used) averaged over them. Code maps are [B, H, W, Q]; ``lookup`` of the first n stages'
    indices [B, H, W, n] decodes at depth n. ``residual_i`` (logged) is the mean squared residual
    |r_i|^2 per element after stage i."""

    class Settings(CodebookSettings):
        num_quantizers: int = setting(4, "Q, the codebooks applied in turn to the residual", ge=1)

    def __init__(
        self,
        num_quantizers: int = Settings.default("num_quantizers"),
        num_codes: int = Settings.default("num_codes"),
        code_dim: int = Settings.default("code_dim"),
        beta: float = Settings.default("beta"),
        update: str = Settings.default("update"),
        decay: float = Settings.default("decay"),
        epsilon: float = Settings.default("epsilon"),
        kmeans_init: bool = Settings.default("kmeans_init"),
        kmeans_iterations: int = Settings.default("kmeans_iterations"),
        restart_dead: bool = Settings.default("restart_dead"),
        dead_threshold: float = Settings.default("dead_threshold"),
        usage_decay: float = Settings.default("usage_decay"),
        seed: int = Settings.default("seed"),
    ):
        super().__init__()
        book = dict(
            num_codes=num_codes,
            code_dim=code_dim,
            beta=beta,
            update=update,
            decay=decay,
            epsilon=epsilon,
            kmeans_init=kmeans_init,
            kmeans_iterations=kmeans_iterations,
            restart_dead=restart_dead,
            dead_threshold=dead_threshold,
            usage_decay=usage_decay,
        )
        self.stages = nn.ModuleList(VectorQuantizer(**book, seed=seed + i) for i in range(num_quantizers))
        first = self.stages[0]
        self.num_codes, self.code_dim, self.dead_threshold = first.num_codes, first.code_dim, first.dead_threshold
        self.index_shape = (num_quantizers,)
        self.logged = tuple(f"residual_{i + 1}" for i in range(num_quantizers))

    @property
    def usage(self) -> Tensor:
        """Every stage's usage averages, one after the other [Q * K]."""
        return torch.cat([stage.usage for stage in self.stages])

    def forward(self, z_e: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """z_e [B, D, H, W] -> (z_q [B, D, H, W] with straight-through gradient, terms)."""
        residual, total, indices = z_e.float(), torch.zeros_like(z_e, dtype=torch.float32), []
        terms: dict[str, Tensor] = {}
        for i, stage in enumerate(self.stages):
            # The stage's output has the value of the codes it matched, e^(i)_{k_i} [B, D, H, W] (in
            # training its forward then moves the codebook: a lookup now would give the moved codes).
            z_stage, stage_terms = stage(residual)
            code = z_stage.detach()
            total = total + code
            residual = residual - code
            indices.append(stage_terms["indices"])
            for name in ("vq_loss", "commitment", "codebook_loss", "perplexity", "codes_used"):
                terms[name] = terms.get(name, 0) + stage_terms[name]
            terms[f"residual_{i + 1}"] = residual.detach().pow(2).mean()
        for name in ("perplexity", "codes_used"):
            terms[name] = terms[name] / len(self.stages)
        z_q = z_e + (total.to(z_e.dtype) - z_e).detach()
        return z_q, {"indices": torch.stack(indices, -1), **terms}

    @torch.no_grad()
    def indices(self, z_e: Tensor) -> Tensor:
        """Code maps [B, H, W, Q] for z_e [B, D, H, W], never updating a codebook."""
        residual, indices = z_e.float(), []
        for stage in self.stages:
            indices.append(stage.indices(residual))
            residual = residual - stage.lookup(indices[-1])
        return torch.stack(indices, -1)

    @torch.no_grad()
    def lookup(self, indices: Tensor) -> Tensor:
        """Code maps [B, H, W, n], n <= Q -> z_q [B, D, H, W], the sum of the first n stages' codes."""
        return sum(stage.lookup(indices[..., i]) for i, stage in enumerate(self.stages[: indices.shape[-1]]))

    def dead_codes(self) -> int:
        return sum(stage.dead_codes() for stage in self.stages)

    def codebooks(self) -> list[VectorQuantizer]:
        return list(self.stages)


QUANTIZERS = {
    "vaelab.quantizer.VectorQuantizer": VectorQuantizer,
    "vaelab.quantizer.FiniteScalarQuantizer": FiniteScalarQuantizer,
    "vaelab.quantizer.ResidualVectorQuantizer": ResidualVectorQuantizer,
}


def quantizer_class(settings: dict) -> type[nn.Module]:
    """The class a ``model.quantizer`` node names (``_target_``; none: a VectorQuantizer, as in
    checkpoints written before the quantizer group)."""
    return QUANTIZERS[settings.get("_target_", "vaelab.quantizer.VectorQuantizer")]


def build_quantizer(settings: dict) -> nn.Module:
    return quantizer_class(settings)(**{k: v for k, v in settings.items() if k != "_target_"})
