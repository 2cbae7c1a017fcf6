"""Priors p(z) of the VAE family: the ``model/prior`` group (standard, mog, vamp).

One contract for every prior, ``L`` latents:

- ``log_prob(z)``: log p(z), [..., L] -> [...];
- ``marginal_log_prob(z)``: log p_d(z_d) of each dimension's marginal, [..., L] -> [..., L];
- ``sample(n, generator)``: [n, L] on the prior's device;
- ``kl(q, z)``: KL(q(z|x) || p(z)) per example [B] and per dimension [B, L].

``closed_form``: the standard normal's KL is exact (AEVB, Appendix B). A mixture has none, so its
KL is the Monte-Carlo estimate log q(z|x) - log p(z) at samples z of q (unbiased; in training the
sample the decoder saw), and its per-dimension KL the estimate of KL(q_d || p_d) between the
marginals of each dimension (these do not sum to the joint KL: the joint also counts how the
mixture ties the dimensions together).

The two mixtures share one computation, log p(z) = logsumexp_k (log pi_k + log N(z; mu_k, Sigma_k)):
the mixture of Gaussians learns (pi, mu, Sigma) itself; the VampPrior (Tomczak & Welling 2018,
eq. 9) is the uniform mixture of the encoder's own posteriors q(z|u_k) at K learned pseudo-inputs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vaelab.distributions import LOG_2PI, DiagonalGaussian
from vaelab.errors import UserError
from vaelab.settings import Settings, setting

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from vaelab.distributions import FullCovGaussian
    from vaelab.flows import FlowPosterior

    Gaussian = DiagonalGaussian | FullCovGaussian
    Posterior = Gaussian | FlowPosterior

# Samples of q per example for the Monte-Carlo KL where no training sample is given (evaluation).
KL_SAMPLES = 100


def component_log_probs(components: Gaussian, z: Tensor) -> Tensor:
    """log N(z; mu_k, Sigma_k) of every component, z [..., L] -> [..., K]. Diagonal components
    expand the square, -0.5 (z^2 . p_k - 2 z . (mu_k p_k) + c_k) with precisions p_k and
    c_k = L log 2 pi + sum log sigma_k^2 + mu_k^2 . p_k: two matrix products instead of a
    [..., K, L] tensor (for the VampPrior's K = 500, what makes evaluation at k = 5000 affordable)."""
    if not isinstance(components, DiagonalGaussian):
        return components.log_prob(z.unsqueeze(-2))
    # In float64: the expanded terms are each up to mu^2 / sigma^2 (1e4 for a trained posterior's
    # sigma = 0.02), and their float32 cancellation would cost tenths of a nat.
    z, mu, logvar = z.double(), components.mu.double(), components.logvar.double()
    precision = torch.exp(-logvar)  # [K, L]
    constant = z.shape[-1] * LOG_2PI + logvar.sum(-1) + (mu**2 * precision).sum(-1)
    quadratic = (z**2) @ precision.T - 2 * z @ (mu * precision).T
    return (-0.5 * (quadratic + constant)).float()


def samples_of(q: Posterior, z: Tensor | None, log_q: Tensor | None) -> tuple[Tensor, Tensor]:
    """Samples z [S, B, L] of q and log q(z|x) [S, B]: KL_SAMPLES fresh ones when ``z`` is None."""
    if z is None:
        z, log_q = q.rsample_with_log_prob(KL_SAMPLES)
    elif log_q is None:
        log_q = q.log_prob(z)
    return (z, log_q) if z.dim() == 3 else (z.unsqueeze(0), log_q.unsqueeze(0))


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over ``latent_dim`` dimensions, with the closed-form KL."""

    closed_form = True
    has_pseudo_inputs = False  # the VampPrior's: images that eval.py draws

    class Settings(Settings):
        pass

    def __init__(self, latent_dim: int, image_shape: Sequence[int] | None = None):
        super().__init__()
        self.latent_dim = latent_dim

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.randn(num_samples, self.latent_dim, generator=generator)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Nothing to hold (see GaussianMixturePrior.held)."""
        yield

    def log_prob(self, z: Tensor, fixed: bool = False) -> Tensor:
        """log N(z; 0, I) summed over L; [..., L] -> [...] (nothing to hold ``fixed``)."""
        return -0.5 * (LOG_2PI + z.float() ** 2).sum(-1)

    def marginal_log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + z.float() ** 2)

    def kl(
        self, q: Posterior, z: Tensor | None = None, per_dim: bool = True, log_q: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """A Gaussian q: the closed form, KL(q || N(0, I)) [B] and per dimension [B, L] (the sum over
        dimensions where q is diagonal; a full-covariance q adds its total correlation); ``z`` is
        not needed, and the per-dimension terms come at no cost. A flow posterior: the Monte-Carlo
        estimate at ``z`` (with ``log_q``, its density there), and no per-dimension terms (a flow's
        marginals have no density to evaluate)."""
        if not q.gaussian:
            z, log_q = samples_of(q, z, log_q)
            return (log_q - self.log_prob(z)).mean(0), None
        terms = q.kl_to_standard_normal_per_dim()
        return (terms.sum(-1) if q.kl_is_sum_per_dim else q.kl_to_standard_normal()), terms


class GaussianMixturePrior(nn.Module):
    """p(z) = sum_k pi_k N(z; mu_k, Sigma_k); a subclass says what the K components are."""

    closed_form = False
    has_pseudo_inputs = False
    _held: Gaussian | None = None

    def components(self, index: Tensor | None = None) -> Gaussian:
        """The K Gaussians as one batch (mu [K, L]), or those at ``index`` [n]."""
        raise NotImplementedError

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Within: ``components()`` computed once and reused (the VampPrior's K encoder passes),
        for evaluation without gradients, where nothing moves between calls."""
        assert not torch.is_grad_enabled(), "held components are for evaluation without gradients"
        outer, self._held = self._held, self.components()
        try:
            yield
        finally:
            self._held = outer

    def log_weights(self) -> Tensor:
        """log pi_k, [K]."""
        raise NotImplementedError

    def log_prob(self, z: Tensor, fixed: bool = False, components: Gaussian | None = None) -> Tensor:
        """logsumexp_k (log pi_k + log N(z; mu_k, Sigma_k)); [..., L] -> [...]. ``fixed``: the
        prior's parameters held fixed, the gradient only along z (DReG's encoder term).
        ``components``: those of ``components()`` when the caller has them."""
        components = self.components() if components is None else components
        log_weights = self.log_weights()
        if fixed:
            components, log_weights = components.detached(), log_weights.detach()
        return torch.logsumexp(log_weights + component_log_probs(components, z.float()), -1)

    def marginal_log_prob(self, z: Tensor, components: Gaussian | None = None) -> Tensor:
        """Each dimension's marginal, the mixture of the components' marginals: [..., L] -> [..., L]."""
        components = self.components() if components is None else components
        per_component = components.marginal_log_prob(z.float().unsqueeze(-2))  # [..., K, L]
        return torch.logsumexp(self.log_weights()[:, None] + per_component, -2)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """A component k ~ pi, then z ~ N(mu_k, Sigma_k); the draws come from ``generator`` (CPU)."""
        weights = self.log_weights().detach().float().softmax(-1).cpu()
        index = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
        eps = torch.randn(num_samples, self.latent_dim, generator=generator)
        device = self.log_weights().device
        components = self.components()  # all K at once (the VampPrior: K encoder passes, not one per sample)
        if isinstance(components, DiagonalGaussian):
            chosen = DiagonalGaussian(components.mu[index.to(device)], components.logvar[index.to(device)])
        else:
            chosen = self.components(index.to(device))
        return chosen.transform(eps.to(device))

    def kl(
        self, q: Posterior, z: Tensor | None = None, per_dim: bool = True, log_q: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Monte Carlo: the mean over the samples z [S, B, L] (or [B, L]) of q of log q(z|x) - log p(z),
        [B], and of log q_d(z_d|x) - log p_d(z_d), [B, L] (None unless ``per_dim`` and q is a
        Gaussian: it costs a K x L mixture per sample); ``z`` None: KL_SAMPLES fresh samples;
        ``log_q``: log q(z|x) at ``z`` when the caller has it (a flow posterior's)."""
        z, log_q = samples_of(q, z, log_q)
        components = self.components()  # the VampPrior's: one pass of the encoder for both
        kl = (log_q - self.log_prob(z, components=components)).mean(0)
        if not per_dim or not q.gaussian:
            return kl, None
        # [chunk, B, K, L] at a time: all KL_SAMPLES at once would hold gigabytes for K = 500.
        per_dim = sum(
            (q.marginal_log_prob(part) - self.marginal_log_prob(part, components)).sum(0) for part in z.split(10)
        )
        return kl, per_dim / len(z)


class MixtureOfGaussiansPrior(GaussianMixturePrior):
    """A mixture of K diagonal Gaussians whose weights, means and variances are learned with the
    model (``learn=false``: fixed at their initial values, means from N(0, init_std^2 I), unit
    variances, equal weights; one component with init_std=0 is the standard normal)."""

    class Settings(Settings):
        components: int = setting(10, "K, the mixture's components", ge=1)
        init_std: float = setting(
            1.0, "the spread of the components' initial means (0 only with one component: equal ones never part)", ge=0
        )
        learn: bool = setting(True, "learn the weights, means and variances (false: keep them fixed)")

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int] | None = None,
        components: int = Settings.default("components"),
        init_std: float = Settings.default("init_std"),
        learn: bool = Settings.default("learn"),
    ):
        super().__init__()
        self.latent_dim = latent_dim
        values = {
            "means": torch.randn(components, latent_dim) * init_std,
            "logvars": torch.zeros(components, latent_dim),
            "logits": torch.zeros(components),
        }
        for name, value in values.items():
            if learn:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def components(self, index: Tensor | None = None) -> DiagonalGaussian:
        if index is None:
            return self._held if self._held is not None else DiagonalGaussian(self.means, self.logvars)
        return DiagonalGaussian(self.means[index], self.logvars[index])

    def log_weights(self) -> Tensor:
        return self.logits.float().log_softmax(-1)


class VampPrior(GaussianMixturePrior):
    """p(z) = (1/K) sum_k q(z|u_k) (Tomczak & Welling 2018, eq. 9): the encoder's posteriors at K
    learned pseudo-inputs u_k, images in the data's [0, 1] range (a hard tanh of free parameters
    initialised around ``init_mean``, as in the paper's code). The encoder is the model's own,
    attached with ``attach`` after the model is built (it is not a module of the prior, so the
    checkpoint holds it once)."""

    has_pseudo_inputs = True

    class Settings(Settings):
        components: int = setting(500, "K, the pseudo-inputs (500 in the paper)", ge=1)
        init_mean: float = setting(
            0.05,
            "the pseudo-inputs' initial pixel mean, inside (0, 1) where the hard tanh passes gradients",
            gt=0,
            lt=1,
        )
        init_std: float = setting(0.01, "the pseudo-inputs' initial pixel spread (> 0: equal ones never part)", gt=0)

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        components: int = Settings.default("components"),
        init_mean: float = Settings.default("init_mean"),
        init_std: float = Settings.default("init_std"),
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.pseudo_input_params = nn.Parameter(torch.randn(components, *image_shape) * init_std + init_mean)
        self.posterior_of: Callable[[Tensor], Gaussian] | None = None

    def attach(self, posterior_of: Callable[[Tensor], Gaussian]) -> None:
        """The encoder's q(.|x) for images [N, C, H, W]."""
        self.posterior_of = posterior_of

    @property
    def pseudo_inputs(self) -> Tensor:
        """u_k, [K, C, H, W] in [0, 1]."""
        return F.hardtanh(self.pseudo_input_params, 0.0, 1.0)

    def components(self, index: Tensor | None = None) -> Gaussian:
        if index is None and self._held is not None:
            return self._held
        inputs = self.pseudo_inputs if index is None else self.pseudo_inputs[index]
        return self.posterior_of(inputs)

    def log_weights(self) -> Tensor:
        k = self.pseudo_input_params.shape[0]
        return torch.full((k,), -math.log(k), device=self.pseudo_input_params.device)


PRIORS: dict[str, type[nn.Module]] = {
    f"vaelab.priors.{cls.__name__}": cls for cls in (StandardNormalPrior, MixtureOfGaussiansPrior, VampPrior)
}
STANDARD = "vaelab.priors.StandardNormalPrior"


def prior_class(settings: dict | None) -> type[nn.Module]:
    """The class a ``model.prior`` node names (none: the standard normal, as in checkpoints
    written before the prior group)."""
    target = (settings or {}).get("_target_", STANDARD)
    if target not in PRIORS:
        raise UserError(
            f"model.prior._target_={target} is not a prior here; choose model/prior=standard, mog or vamp "
            f"({', '.join(PRIORS)})"
        )
    return PRIORS[target]


def build_prior(settings: dict | None, latent_dim: int, image_shape: Sequence[int]) -> nn.Module:
    values: dict[str, Any] = {k: v for k, v in (settings or {}).items() if k != "_target_"}
    return prior_class(settings)(latent_dim, image_shape, **values)
