"""The Gaussian VAE of the AEVB paper as a LightningModule.

The module only orchestrates: the encoder gives q(z|x) (``distributions.DiagonalGaussian``),
a reparameterized sample goes through the decoder into the likelihood p(x|z), the KL to the
prior is closed form, and ``objective`` turns those terms into the loss. A variant overrides
``objective`` (and adds its own hyperparameters); everything else is shared.

The constructor takes plain values only, so ``VAE.load_from_checkpoint(path)`` rebuilds the
model from the checkpoint alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab import objectives
from vaelab.checks import (
    and_list,
    check_likelihood,
    is_int,
    is_list,
    is_number,
    plain,
    positive_int,
    require,
    set_by_user,
)
from vaelab.distributions import POSTERIORS, StandardNormalPrior, build_likelihood
from vaelab.errors import UserError
from vaelab.models.base import GenerativeModel
from vaelab.nets import ACTIVATIONS, build_networks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from vaelab.distributions import DiagonalGaussian, FullCovGaussian


# Entries of ``objective``'s result that step_metrics logs itself (as recon and kl) or derives
# (the ELBO), or that are not one number per example (``kl_per_dim`` is [B, L]).
TERMS_LOGGED_APART = ("loss", "log_px_given_z", "kl", "kl_per_dim", "elbo")


def variants_of(cls: type) -> list[type]:
    """Every subclass of ``cls`` imported so far, depth first."""
    found = []
    for subclass in cls.__subclasses__():
        found += [subclass, *variants_of(subclass)]
    return found


class VAE(GenerativeModel):
    """Gaussian VAE. ``posterior``: ``diagonal`` or ``full`` (Cholesky-factored covariance).
    ``estimator``: the encoder's gradient, ``reparam`` (pathwise) or ``score_function``
    (likelihood ratio with a moving-average baseline, decay ``baseline_decay``).
    ``test_k`` > 0 also reports the k-sample importance-weighted bound at test time."""

    # The settings only this variant takes, each with what it is: given to another model, the
    # check says where it belongs (e.g. "model.k belongs to the IWAE bound; use model=iwae").
    own_settings: ClassVar[dict[str, str]] = {}

    def __init__(
        self,
        image_shape: list[int],
        latent_dim: int,
        net: dict,
        likelihood: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        beta: float = 1.0,
        posterior: str = "diagonal",
        estimator: str = "reparam",
        baseline_decay: float = 0.99,
        test_k: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the loggers get the whole run config (train())
        self.image_shape = tuple(image_shape)
        self.num_dims = math.prod(image_shape)
        self.beta = beta
        self.estimator = estimator
        self.baseline_decay = baseline_decay
        self.test_k = test_k
        self.posterior_family = POSTERIORS[posterior]
        num_params = self.posterior_family.num_params(latent_dim)
        self.encoder, self.decoder = build_networks(net, image_shape, latent_dim, num_params)
        self.likelihood = build_likelihood(image_shape=image_shape, **likelihood)
        self.prior = StandardNormalPrior(latent_dim)
        # The score-function control variate: a running mean of log p(x|z).
        self.register_buffer("baseline", torch.zeros(()))

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """The latent size, the networks, the likelihood, the posterior and the gradient estimator;
        a variant's key given to a model that does not take it."""
        super().check_config(model_cfg, cfg)
        positive_int(model_cfg.latent_dim, "size.latent_dim")
        beta = model_cfg.beta
        require(is_number(beta) and beta >= 0, f"model.beta must be a number ≥ 0, got {beta!r}")
        net = model_cfg.net
        require(
            net.kind in ("mlp", "conv"), f"net.kind must be mlp or conv, got {net.kind!r}; choose net=mlp or net=conv"
        )
        # The keys each kind of net takes (build_networks reads no others).
        settings = {
            "mlp": ("kind", "hidden_dims", "activation"),
            "conv": ("kind", "channels", "activation", "kernel", "dense"),
        }
        for key in net:
            takes = settings[net.kind]
            if key in takes:
                continue
            other = next((kind for kind, keys in settings.items() if key in keys), None)
            require(
                other is None,
                f"net.{key} has no effect with net.kind={net.kind} (it takes {and_list(takes[1:])}); "
                f"drop net.{key} or choose net={other}",
            )
            raise UserError(
                f"net.{key} is not a setting of net.kind={net.kind} (it takes {and_list(takes[1:])}); drop it"
            )
        require(
            net.activation in ACTIVATIONS,
            f"net.activation must be one of {sorted(ACTIVATIONS)}, got {net.activation!r}",
        )
        require(
            not model_cfg.get("channels_last") or net.kind == "conv",
            "model.channels_last=true is a memory layout for convolutions; use it with net=conv",
        )
        widths_key = "hidden_dims" if net.kind == "mlp" else "channels"
        widths = net[widths_key]
        require(
            len(widths) >= 1 and all(is_int(w) and w >= 1 for w in widths),
            f"net.{widths_key} (from size.{widths_key}) must be a non-empty list of positive integers, "
            f"got {list(widths)}",
        )
        if net.kind == "conv":
            cls.check_conv_net(net, widths, cfg.data.image_shape)
        check_likelihood(model_cfg.likelihood, cfg.data.get("num_levels"))
        posterior = model_cfg.get("posterior", "diagonal")
        require(posterior in ("diagonal", "full"), f"model.posterior must be diagonal or full, got {posterior!r}")
        estimator = model_cfg.get("estimator", "reparam")
        require(
            estimator in ("reparam", "score_function"),
            f"model.estimator must be reparam or score_function, got {estimator!r}",
        )
        decay = model_cfg.get("baseline_decay", 0.99)
        require(is_number(decay) and 0 <= decay < 1, f"model.baseline_decay must be in [0, 1), got {decay!r}")
        require(
            estimator != "reparam" or not set_by_user(cfg, "model.baseline_decay", like=("_target_",)),
            "model.baseline_decay has no effect with model.estimator=reparam: it is the score-function estimator's "
            "baseline; set model.estimator=score_function or drop model.baseline_decay",
        )
        test_k = model_cfg.get("test_k", 0)
        require(is_int(test_k) and test_k >= 0, f"model.test_k must be a whole number ≥ 0, got {test_k!r}")
        require(
            not test_k or cfg.get("test", True) or cfg.trainer.get("fast_dev_run"),
            "model.test_k reports a bound on the test split, which test=false skips; set test=true or model.test_k=0",
        )
        # A setting of another variant, refused with where it belongs (each variant lists its own).
        for variant in variants_of(VAE):
            for key, where in variant.own_settings.items():
                require(key not in model_cfg or cls.takes(key), f"model.{key} {where} (this is model={cls.__name__})")

    @staticmethod
    def check_conv_net(net: DictConfig, channels: Sequence[int], image_shape: Sequence[int]) -> None:
        """The optional ``kernel`` and ``dense`` of a conv net, and images large enough for its
        stride-2 convolutions (a 4x4 kernel halves the size, so n convolutions need 2^n pixels)."""
        kernel = net.get("kernel", 3)
        require(kernel in (3, 4), f"net.kernel must be 3 or 4, got {kernel!r}")
        dense = net.get("dense") or []
        require(
            is_list(dense) and all(is_int(w) and w >= 1 for w in dense),
            f"net.dense must be a list of positive integers, got {plain(dense)}",
        )
        smallest = 2 ** len(channels) if kernel == 4 else 1
        require(
            min(image_shape[1:]) >= smallest,
            f"the net's {len(channels)} stride-2 4x4 convolutions need images of at least {smallest}x{smallest}, "
            f"but data.image_shape is {list(image_shape)}; use larger images or fewer net.channels",
        )

    # ---- the model -------------------------------------------------------------------
    def posterior(self, x: Tensor) -> DiagonalGaussian | FullCovGaussian:
        """q(z|x) for images x [B, C, H, W]."""
        return self.posterior_family.from_params(self.encoder(x))

    def terms(self, x: Tensor) -> dict[str, Tensor]:
        """Per-example [B] terms of one pass: log p(x|z), KL, ELBO; ``kl_per_dim`` is [B, L]."""
        q = self.posterior(x)
        if self.estimator == "score_function" and self.training:
            z = q.rsample().detach()  # no pathwise gradient: the encoder learns through log q
            log_px_given_z = self.likelihood.log_prob(x, self.decoder(z))
            log_px_given_z = log_px_given_z + self.score_function_term(log_px_given_z.detach(), q.log_prob(z))
        else:
            z = q.rsample()
            log_px_given_z = self.likelihood.log_prob(x, self.decoder(z))
        kl_per_dim = q.kl_to_standard_normal_per_dim()
        # Summed from the per-dimension terms where they add up to the joint KL (diagonal q).
        kl = kl_per_dim.sum(-1) if q.kl_is_sum_per_dim else q.kl_to_standard_normal()
        return {
            "log_px_given_z": log_px_given_z,
            "kl": kl,
            "kl_per_dim": kl_per_dim,
            "elbo": objectives.elbo(log_px_given_z, kl),
        }

    def score_function_term(self, f: Tensor, log_q: Tensor) -> Tensor:
        """Zero in value; its gradient is (f - b) * grad log q(z|x), the likelihood-ratio
        estimator of grad E_q[f] with baseline b (seeds: the REINFORCE / score-function gradient)."""
        surrogate = (f - self.baseline) * log_q
        with torch.no_grad():
            self.baseline.lerp_(f.mean(), 1 - self.baseline_decay)
        return surrogate - surrogate.detach()

    def objective(self, x: Tensor) -> dict[str, Tensor]:
        """What a variant overrides: ``loss``, the scalar that is minimised (here -ELBO with weight
        beta), the per-example [B] terms ``log_px_given_z`` and ``kl`` (the ELBO is derived from
        their means), and anything else to log: every other scalar or [B] entry is logged as its
        batch mean under its own name (``beta``, ``iwae_bound``, ``tc``, ...)."""
        terms = self.terms(x)
        terms["loss"] = objectives.beta_vae_loss(terms["log_px_given_z"], terms["kl"], self.beta)
        return terms

    def log_weights(self, x: Tensor, num_samples: int) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x); [k, B]."""
        q = self.posterior(x)
        z = q.rsample(num_samples)
        return self.likelihood.log_prob(x, self.decoder(z)) + self.prior.log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def importance_sampling(self, x: Tensor, k: int, chunk: int = 100) -> tuple[Tensor, Tensor]:
        """Per example [B]: the k-sample bound L_k = log (1/k) sum_k w_k (Burda et al. 2016), which
        tends to log p(x) as k grows, and the mean of log p(x|z_k) over the same samples (for a
        low-variance ELBO). Samples are drawn ``chunk`` at a time and folded into a running
        logsumexp, so memory is bounded by ``chunk``, not ``k``."""
        posterior_params = self.encoder(x)
        log_sum_w = torch.full((x.shape[0],), -math.inf, device=x.device)
        sum_log_px = torch.zeros(x.shape[0], device=x.device)
        for start in range(0, k, chunk):
            chunk_log_sum_w, chunk_sum_log_px = self.importance_chunk(x, posterior_params, min(chunk, k - start))
            log_sum_w = torch.logaddexp(log_sum_w, chunk_log_sum_w)
            sum_log_px += chunk_sum_log_px
        return log_sum_w - math.log(k), sum_log_px / k

    def importance_chunk(self, x: Tensor, posterior_params: Tensor, num_samples: int) -> tuple[Tensor, Tensor]:
        """For ``num_samples`` draws z_k ~ q(z|x) (q given by the encoder's output
        ``posterior_params``): log sum_k w_k and sum_k log p(x|z_k), each [B]."""
        q = self.posterior_family.from_params(posterior_params)
        z = q.rsample(num_samples)
        log_px_given_z = self.likelihood.log_prob(x, self.decoder(z))
        log_w = log_px_given_z + self.prior.log_prob(z) - q.log_prob(z)
        return torch.logsumexp(log_w, dim=0), log_px_given_z.sum(0)

    def iwae_bound(self, x: Tensor, k: int, chunk: int = 100) -> Tensor:
        """L_k per example [B]; see ``importance_sampling``."""
        return self.importance_sampling(x, k, chunk)[0]

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The mean and standard deviation of q(z|x) per latent, each [B, L] (for a full-covariance
        posterior, the square roots of the covariance's diagonal)."""
        q = self.posterior(x)
        return q.mu, q.std

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """E[x|z] for latents z [B, L]: images [B, C, H, W]."""
        return self.likelihood.mean(self.decoder(z))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, k: int = 1000, chunk: int = 100) -> Tensor:
        """log p(x) per image [B], nats: the k-sample importance-weighted bound, which tends to
        log p(x) as k grows (5000 in the literature)."""
        return self.importance_sampling(x, k, chunk)[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at the posterior mean z = mu(x)."""
        return self.likelihood.mean(self.decoder(self.posterior(x).mu))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """E[x|z] for z drawn from the prior."""
        z = torch.randn(num_samples, self.prior.latent_dim, generator=generator).to(self.device)
        return self.likelihood.mean(self.decoder(z))

    # ---- Lightning -------------------------------------------------------------------
    def compile_computation(self) -> None:
        """``model.compile=true``: the whole training and validation step (networks,
        reparameterized samples, likelihood, KL, bound, loss and the logged means; forward and
        backward) is one compiled graph, and so is each chunk of importance sampling. Methods are
        compiled, not modules, so checkpoints are those of the eager model."""
        # Inductor's own random-number kernels draw other numbers than eager code from the same
        # generator state; eager's draws keep a compiled run the eager run, to float rounding.
        options = {"fallback_random": True}
        self.step_metrics = torch.compile(self.step_metrics, options=options)
        self.importance_chunk = torch.compile(self.importance_chunk, options=options)

    def step_metrics(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and the batch means that every other metric derives from: recon
        (-log p(x|z)), kl, and every other scalar or per-example term the objective returns."""
        terms = self.objective(x)
        metrics = {"loss": terms["loss"], "recon": -terms["log_px_given_z"].mean(), "kl": terms["kl"].mean()}
        metrics.update(
            {name: value.mean() for name, value in terms.items() if name not in TERMS_LOGGED_APART and value.dim() <= 1}
        )
        return terms["loss"], {name: value.detach().float() for name, value in metrics.items()}

    def with_derived(self, metrics: dict[str, Tensor]) -> dict[str, Tensor]:
        """Adds the ELBO (always beta = 1) and its bits/dim; both are linear in the batch means,
        so deriving them from averaged recon and KL is exact."""
        elbo = -(metrics["recon"] + metrics["kl"])
        bpd = objectives.bits_per_dim(-elbo, self.num_dims, self.likelihood.bpd_offset_nats_per_dim)
        return {**metrics, "elbo": elbo, "bpd": bpd}

    def eval_metrics(self, x: Tensor, stage: str) -> dict[str, Tensor]:
        if stage == "test" and self.test_k:
            return {"iwae_bound": self.iwae_bound(x, self.test_k).mean()}
        return {}
