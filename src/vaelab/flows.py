"""Normalizing-flow posteriors (model.posterior=planar|iaf): a diagonal Gaussian pushed through K
invertible maps,

    z_0 ~ q_0(z|x) = N(mu(x), diag sigma^2(x)),   z_K = f_K(... f_1(z_0)),
    log q(z_K|x) = log q_0(z_0|x) - sum_k log |det df_k / dz_{k-1}|

(the change of variables; Rezende & Mohamed 2015, eq. 5-7). The flows are never inverted: the
density is computed at the posterior's own samples (``FlowPosterior.rsample_with_log_prob``), which
is all the bound, the KL estimate and the importance sampler need.

Shapes: ``B`` batch, ``L`` latents, ``S`` samples per example; z is [B, L] or [S, B, L] and the
per-example context (the encoder's extra outputs) [B, C] broadcasts over S.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.distributions import DiagonalGaussian


class PlanarFlow(nn.Module):
    """K planar steps f(z) = z + u_hat tanh(w^T z + b) (Rezende & Mohamed 2015, eq. 10), amortized:
    each example's (u, w, b) for every step are encoder outputs, [B, K (2L + 1)]. The paper's
    reparameterization u_hat = u + (m(w^T u) - w^T u) w / |w|^2 with m(a) = -1 + softplus(a)
    (appendix A.1) keeps w^T u_hat > -1, so each step is invertible, and
    log |det df/dz| = log (1 + h'(w^T z + b) w^T u_hat) (eq. 11-12), positive inside the log."""

    def __init__(self, latent_dim: int, steps: int):
        super().__init__()
        self.latent_dim, self.steps = latent_dim, steps

    @property
    def context_size(self) -> int:
        return self.steps * (2 * self.latent_dim + 1)

    def step_parameters(self, context: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(u_hat, w, b) of each step: [B, L], [B, L], [B]."""
        latent = self.latent_dim
        steps = []
        for params in context.view(*context.shape[:-1], self.steps, 2 * latent + 1).unbind(-2):
            u, w, b = params[..., :latent], params[..., latent : 2 * latent], params[..., -1]
            wu = (w * u).sum(-1, keepdim=True)
            u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w * w).sum(-1, keepdim=True).clamp(min=1e-12)
            steps.append((u_hat, w, b))
        return steps

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """z_0 [..., B, L] -> (z_K [..., B, L], sum_k log |det df_k/dz| [..., B])."""
        log_det = z.new_zeros(z.shape[:-1])
        for u_hat, w, b in self.step_parameters(context.to(z.dtype)):
            h = torch.tanh((z * w).sum(-1) + b)
            log_det = log_det + torch.log1p((1 - h**2) * (w * u_hat).sum(-1))
            z = z + u_hat * h.unsqueeze(-1)
        return z, log_det


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask [out, in] (MADE, Germain et al. 2015)."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class AutoregressiveStep(nn.Module):
    """One IAF step's MADE: [m, s] = AR(z; h) with m_i and s_i functions of the z_j earlier than i in
    ``order`` and of the context h only, through one masked hidden layer of ``hidden`` ELUs that
    also reads h, and h read directly (so the first dimension of the order, which no z reaches,
    still depends on x). s starts near 1.5 (sigma near 0.82): each step begins by keeping most of
    z (Kingma et al. 2016 start their gates at positive values for the same reason)."""

    def __init__(self, order: Tensor, hidden: int, context: int):
        super().__init__()
        latent = len(order)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(latent)  # rank[i]: the position of dimension i in the order
        hidden_rank = torch.arange(hidden) % max(latent - 1, 1)  # each hidden unit sees ranks <= its own
        self.inner = MaskedLinear(rank[None, :] <= hidden_rank[:, None])
        self.context = nn.Linear(context, hidden)
        self.outer = MaskedLinear((rank[:, None] > hidden_rank[None, :]).repeat(2, 1))
        self.context_out = nn.Linear(context, 2 * latent, bias=False)
        with torch.no_grad():
            self.outer.bias[latent:] = 1.5

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        m, s = (self.outer(F.elu(self.inner(z) + self.context(h))) + self.context_out(h)).chunk(2, -1)
        return m, s


class InverseAutoregressiveFlow(nn.Module):
    """K IAF steps z <- sigma * z + (1 - sigma) * m, [m, s] = AR_k(z; h), sigma = sigmoid(s)
    (Kingma et al. 2016, algorithm 1 and eq. 14), the order of the dimensions reversed between
    steps. Each step's Jacobian is triangular in its order with diagonal sigma, so
    log |det| = sum_i log sigma_i. The context h [B, C] is an encoder output."""

    def __init__(self, latent_dim: int, steps: int, hidden: int):
        super().__init__()
        self.latent_dim, self.hidden = latent_dim, hidden
        forward_order = torch.arange(latent_dim)
        self.steps = nn.ModuleList(
            AutoregressiveStep(forward_order if k % 2 == 0 else forward_order.flip(0), hidden, hidden)
            for k in range(steps)
        )

    @property
    def context_size(self) -> int:
        return self.hidden

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        log_det = z.new_zeros(z.shape[:-1])
        h = context.to(z.dtype).expand(*z.shape[:-1], -1)
        for step in self.steps:
            m, s = step(z, h)
            log_sigma = F.logsigmoid(s)
            z = log_sigma.exp() * z + (1 - log_sigma.exp()) * m
            log_det = log_det + log_sigma.sum(-1)
        return z, log_det


FLOWS = {"planar": PlanarFlow, "iaf": InverseAutoregressiveFlow}


def build_flow(kind: str, latent_dim: int, steps: int, hidden: int) -> nn.Module:
    """``hidden``: the IAF's hidden units (a planar step has none)."""
    return PlanarFlow(latent_dim, steps) if kind == "planar" else InverseAutoregressiveFlow(latent_dim, steps, hidden)


class FlowPosterior:
    """q(z|x): ``base`` N(mu, sigma^2) [B, L] pushed through ``flow`` with the example's ``context``
    [B, C]. ``mu``: the flow's image of the base mean (where q puts its mass, not its mean); ``std``:
    the base's spread, before the flow."""

    gaussian = False
    kl_is_sum_per_dim = False

    def __init__(self, base: DiagonalGaussian, flow: nn.Module, context: Tensor):
        self.base, self.flow, self.context = base, flow, context

    @property
    def mu(self) -> Tensor:
        with torch.autocast(self.base.mu.device.type, enabled=False):
            return self.flow(self.base.mu, self.context.float())[0]

    @property
    def std(self) -> Tensor:
        return self.base.std

    def rsample_with_log_prob(self, num_samples: int | None = None) -> tuple[Tensor, Tensor]:
        """A reparameterized sample z [B, L] ([S, B, L]) and log q(z|x) [B] ([S, B]) by the change of variables."""
        z0 = self.base.rsample(num_samples)
        # float32 as every log-density here: bf16 gates compound over the steps (tenths of a nat).
        with torch.autocast(z0.device.type, enabled=False):
            z, log_det = self.flow(z0, self.context.float())
        return z, self.base.log_prob(z0) - log_det

    def rsample(self, num_samples: int | None = None) -> Tensor:
        return self.rsample_with_log_prob(num_samples)[0]

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError(
            "a flow posterior's density is computed at its own samples (rsample_with_log_prob); "
            "the flows are not inverted"
        )
