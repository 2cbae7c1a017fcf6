"""The Gaussian VAE of the AEVB paper as a LightningModule.

The module only orchestrates: the encoder gives q(z|x) (``distributions.DiagonalGaussian``),
a reparameterized sample goes through the decoder into the likelihood p(x|z), the KL to the
prior p(z) (``priors``: closed form for N(0, I), a Monte-Carlo estimate for a learned prior), and
``objective`` turns those terms into the loss. A variant overrides ``objective`` (and declares
its own settings in its ``Settings``); everything else is shared.

The constructor takes plain values only, so ``VAE.load_from_checkpoint(path)`` rebuilds the
model from the checkpoint alone.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from omegaconf import DictConfig
from torch import Tensor

from vaelab import objectives
from vaelab.checks import option_name, require, set_by_user
from vaelab.distributions import POSTERIORS, DiagonalGaussian, build_likelihood, check_likelihood
from vaelab.errors import UserError
from vaelab.flows import FLOWS, FlowPosterior, build_flow
from vaelab.hierarchy import TwoLayerPosterior, TwoLayerPrior, gaussian_layer
from vaelab.models.base import GenerativeModel
from vaelab.nets import build_networks, check_net
from vaelab.priors import STANDARD, build_prior, prior_class
from vaelab.settings import setting, validate

if TYPE_CHECKING:
    from vaelab.distributions import FullCovGaussian

    Posterior = DiagonalGaussian | FullCovGaussian | FlowPosterior


# Entries of ``objective``'s result that step_metrics logs itself (as recon and kl) or derives
# (the ELBO), or that are not one number per example (``kl_per_dim`` is [B, L]).
TERMS_LOGGED_APART = ("loss", "log_px_given_z", "kl", "kl_per_dim", "elbo")


class VAE(GenerativeModel):
    """Gaussian VAE. ``posterior``: ``diagonal`` or ``full`` (Cholesky-factored covariance), or a
    diagonal Gaussian through ``flow_steps`` steps of a normalizing flow (``planar``, ``iaf``).
    ``estimator``: the encoder's gradient, ``reparam`` (pathwise) or ``score_function``
    (likelihood ratio with a moving-average baseline, decay ``baseline_decay``).
    ``test_k`` > 0 also reports the k-sample importance-weighted bound at test time."""

    class Settings(GenerativeModel.Settings):
        image_shape: list[int] = setting(..., "the images' [channels, height, width] (data.image_shape)")
        latent_dim: int = setting(..., "latent dimensions (size.latent_dim)", ge=1)
        net: dict = setting(..., "the encoder and decoder (the net group)")
        likelihood: dict = setting(..., "p(x|z) (the likelihood group)")
        beta: float = setting(1.0, "the KL's weight in the loss", ge=0, says="a number ≥ 0")
        prior: dict = setting({"_target_": STANDARD}, "p(z) (the model/prior group: standard, mog, vamp)")
        posterior: Literal[(*POSTERIORS, *FLOWS)] = setting(
            "diagonal", "q(z|x): diagonal, full covariance through a Cholesky factor, or a flow (planar, iaf)"
        )
        flow_steps: int = setting(8, "the flow posterior's steps (model.posterior=planar or iaf)", ge=1)
        flow_hidden: int = setting(320, "an IAF step's hidden units, and the encoder's context for it", ge=1)
        top_latents: int = setting(
            0,
            "> 0: a second stochastic layer z2 of this many latents above z (Burda et al. 2016's two-layer model)",
            ge=0,
        )
        top_hidden: list[int] = setting([100, 100], "the hidden units of q(z2|z1) and p(z1|z2) (model.top_latents > 0)")
        estimator: Literal["reparam", "score_function"] = setting(
            "reparam", "the encoder's gradient: pathwise, or likelihood ratio with a moving-average baseline"
        )
        baseline_decay: float = setting(0.99, "the score-function baseline's moving-average decay", ge=0, lt=1)
        test_k: int = setting(0, "> 0: also report the k-sample IWAE bound on the test split", ge=0)
        channels_last: bool = setting(False, "conv nets: NHWC memory layout (faster on GPUs with tensor cores)")

    def __init__(
        self,
        image_shape: list[int],
        latent_dim: int,
        net: dict,
        likelihood: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        beta: float = Settings.default("beta"),
        prior: dict = Settings.default("prior"),  # noqa: B008 (never mutated)
        posterior: str = Settings.default("posterior"),
        flow_steps: int = Settings.default("flow_steps"),
        flow_hidden: int = Settings.default("flow_hidden"),
        top_latents: int = Settings.default("top_latents"),
        top_hidden: list[int] = Settings.default("top_hidden"),  # noqa: B008 (never mutated)
        estimator: str = Settings.default("estimator"),
        baseline_decay: float = Settings.default("baseline_decay"),
        test_k: int = Settings.default("test_k"),
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the loggers get the whole run config (train())
        self.image_shape = tuple(image_shape)
        self.num_dims = math.prod(image_shape)
        self.beta = beta
        self.estimator = estimator
        self.baseline_decay = baseline_decay
        self.test_k = test_k
        # A flow posterior: the encoder gives its base Gaussian and each example's flow context.
        self.flow = build_flow(posterior, latent_dim, flow_steps, flow_hidden) if posterior in FLOWS else None
        if posterior not in POSTERIORS and posterior not in FLOWS:
            raise UserError(
                f"model.posterior={posterior} is not a posterior here; choose one of {[*POSTERIORS, *FLOWS]}"
            )
        self.posterior_family = POSTERIORS.get(posterior, DiagonalGaussian)  # a flow's base: diagonal
        self.num_posterior_params = self.posterior_family.num_params(latent_dim) + (
            self.flow.context_size if self.flow is not None else 0
        )
        self.encoder, self.decoder = build_networks(net, image_shape, latent_dim, self.num_posterior_params)
        self.likelihood = build_likelihood(image_shape=image_shape, **likelihood)
        # A second stochastic layer: z = [z1, z2] to the rest of the model, the decoder reads z1.
        self.upward = None
        if top_latents and (posterior != "diagonal" or not prior_class(prior).closed_form or self.standard_prior_only):
            raise UserError(
                "model.top_latents needs model.posterior=diagonal, model/prior=standard and model=vae, beta_vae or "
                "iwae; set model.top_latents=0 for the others"
            )
        if top_latents:
            activation = net.get("activation", "tanh")
            self.upward = gaussian_layer(latent_dim, top_hidden, top_latents, activation)
            self.prior = TwoLayerPrior(latent_dim, top_latents, top_hidden, activation)
        else:
            self.prior = build_prior(prior, latent_dim, image_shape)
        if hasattr(self.prior, "attach"):  # the VampPrior: a mixture of this encoder's posteriors
            self.prior.attach(self.posterior)
        # The score-function control variate: a running mean of log p(x|z).
        self.register_buffer("baseline", torch.zeros(()))

    # A variant whose loss needs the pathwise gradient of its samples (a bound over several, an
    # MMD or a discriminator of them) sets this: the score-function estimator is refused for it.
    reparameterized_only = False
    # A variant whose objective is defined for p(z) = N(0, I) alone says why here; model/prior
    # other than standard is refused for it.
    standard_prior_only: str | None = None

    @classmethod
    def check_config(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """The networks and the likelihood against the data, and the settings that only have an
        effect together."""
        if cls.reparameterized_only:
            name = f"model={option_name(cfg, 'model') or cls.__name__}"
            require(
                not set_by_user(cfg, "model.baseline_decay", like=("_target_",)),
                f"model.baseline_decay has no effect on {name}, which trains with reparameterized gradients only; "
                "drop model.baseline_decay",
            )
            require(
                model_cfg.get("estimator", "reparam") == "reparam",
                f"{name} trains with reparameterized gradients; set model.estimator=reparam",
            )
        super().check_config(model_cfg, cfg)
        cls.check_hierarchy(model_cfg, cfg)
        cls.check_prior(model_cfg, cfg)
        cls.check_flow(model_cfg, cfg)
        check_net(model_cfg.net, cfg.data.image_shape)
        require(
            not model_cfg.get("channels_last") or model_cfg.net.kind == "conv",
            "model.channels_last=true is a memory layout for convolutions; use it with net=conv",
        )
        check_likelihood(model_cfg.likelihood, cfg.data.get("num_levels"))
        require(
            model_cfg.estimator != "reparam" or not set_by_user(cfg, "model.baseline_decay", like=("_target_",)),
            "model.baseline_decay has no effect with model.estimator=reparam: it is the score-function estimator's "
            "baseline; set model.estimator=score_function or drop model.baseline_decay",
        )
        require(
            not model_cfg.test_k or cfg.get("test", True) or cfg.trainer.get("fast_dev_run"),
            "model.test_k reports a bound on the test split, which test=false skips; set test=true or model.test_k=0",
        )

    @classmethod
    def check_flow(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """A flow posterior's settings have an effect, and it composes with this variant."""
        flow = model_cfg.get("posterior") in FLOWS
        for key in ("flow_steps", "flow_hidden"):
            needs = ("planar", "iaf") if key == "flow_steps" else ("iaf",)
            require(
                model_cfg.get("posterior") in needs or not set_by_user(cfg, f"model.{key}", like=("_target_",)),
                f"model.{key} has no effect with model.posterior={model_cfg.get('posterior')}; "
                f"set model.posterior={' or '.join(needs)} or drop model.{key}",
            )
        if not flow:
            return
        latent = cfg.model.get("latent_dim")
        require(
            model_cfg.posterior != "iaf" or not isinstance(latent, int) or model_cfg.flow_hidden >= latent - 1,
            f"model.flow_hidden={model_cfg.get('flow_hidden')} is too few for {latent} latents: an IAF step's "
            f"masks need at least latent_dim - 1 = {latent and latent - 1} hidden units to reach every earlier "
            "dimension; raise model.flow_hidden",
        )
        name = f"model={option_name(cfg, 'model') or cls.__name__}"
        require(
            cls.standard_prior_only is None,
            f"model.posterior={model_cfg.posterior} composes with model=vae, beta_vae and iwae; {name} "
            f"{cls.standard_prior_only} with a Gaussian q(z|x); set model.posterior=diagonal",
        )
        require(
            prior_class(model_cfg.get("prior")).__name__ != "VampPrior",
            f"model/prior=vamp mixes q(z|u_k), which model.posterior={model_cfg.posterior} knows only at its "
            "own samples; use model/prior=standard or mog with a flow posterior",
        )
        require(
            model_cfg.get("estimator", "reparam") == "reparam",
            f"model.posterior={model_cfg.posterior} trains with reparameterized gradients; set model.estimator=reparam",
        )
        require(
            not model_cfg.get("free_bits"),
            f"model.free_bits needs a per-dimension KL, which model.posterior={model_cfg.posterior} does not "
            "have; drop model.free_bits",
        )

    @classmethod
    def check_hierarchy(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """A second stochastic layer composes with the Gaussian VAE's bounds only."""
        top = model_cfg.get("top_latents") or 0
        require(
            top or not set_by_user(cfg, "model.top_hidden", like=("_target_",)),
            "model.top_hidden has no effect without a second stochastic layer; set model.top_latents > 0 "
            "or drop model.top_hidden",
        )
        if not top:
            return
        require(
            len(model_cfg.top_hidden) > 0 and all(isinstance(h, int) and h > 0 for h in model_cfg.top_hidden),
            f"model.top_hidden={list(model_cfg.top_hidden)} must be a non-empty list of positive layer widths, "
            "e.g. [100,100]",
        )
        name = f"model={option_name(cfg, 'model') or cls.__name__}"
        require(
            cls.standard_prior_only is None,
            f"model.top_latents composes with model=vae, beta_vae and iwae; {name} {cls.standard_prior_only} "
            "over one Gaussian layer; set model.top_latents=0",
        )
        require(
            model_cfg.get("posterior", "diagonal") == "diagonal",
            f"model.top_latents builds q(z1|x) q(z2|z1) from diagonal Gaussians; model.posterior="
            f"{model_cfg.get('posterior')} is not supported with a second layer; set model.posterior=diagonal",
        )
        require(
            prior_class(model_cfg.get("prior")).closed_form,
            "with model.top_latents the prior is p(z1|z2) N(z2; 0, I), learned with the model; "
            "use model/prior=standard or set model.top_latents=0",
        )
        require(
            model_cfg.get("estimator", "reparam") == "reparam",
            "model.top_latents trains with reparameterized gradients; set model.estimator=reparam",
        )
        require(
            not model_cfg.get("free_bits"),
            "model.free_bits needs a per-dimension KL, which a two-layer model does not have; drop model.free_bits",
        )
        require(
            not model_cfg.get("dreg"),
            "model.dreg=true is implemented for one Gaussian layer only (q(z2|z1) takes its parameters from "
            "the sample z1); set model.dreg=false with model.top_latents",
        )

    @classmethod
    def check_prior(cls, model_cfg: DictConfig, cfg: DictConfig) -> None:
        """The model/prior node's settings, and that this variant takes a prior other than N(0, I)."""
        node = model_cfg.get("prior") or {"_target_": STANDARD}
        kind = prior_class(node)
        validate(
            kind.Settings,
            node,
            "model.prior",
            unknown=lambda key: f"model.prior.{key} is not a setting of {kind.__name__}; drop it",
        )
        if kind.closed_form:
            return
        require(
            node.get("components", 1) == 1 or node.get("init_std", 1) > 0,
            f"model.prior.init_std=0 starts all {node.get('components')} components equal, and equal components "
            "get equal gradients and never part; set model.prior.init_std > 0 (or model.prior.components=1)",
        )
        if kind.has_pseudo_inputs:
            require(
                model_cfg.get("posterior", "diagonal") != "full",
                "model/prior=vamp with model.posterior=full would hold a Cholesky factor per sample and pseudo-input "
                "(tens of GB at K = 500); use model.posterior=diagonal with the VampPrior",
            )
            require(
                cfg.data.get("num_levels") is not None,
                "model/prior=vamp's pseudo-inputs are images in [0, 1], and these data are continuous values as they "
                "are; scale them to [0, 1] as integers (data.num_levels) or use model/prior=mog",
            )
        name = f"model={option_name(cfg, 'model') or cls.__name__}"
        require(
            model_cfg.get("estimator", "reparam") == "reparam",
            "model.estimator=score_function needs model/prior=standard: a learned prior's Monte-Carlo KL "
            "has no score-function gradient here; set model.estimator=reparam",
        )
        require(
            cls.standard_prior_only is None,
            f"{name} {cls.standard_prior_only}; use model/prior=standard, or model=vae, beta_vae or iwae "
            "with a learned prior",
        )

    # ---- the model -------------------------------------------------------------------
    # ``y``: the labels a conditional model (``conditional = True``, the cVAE) is given with the
    # images, through every method below; an unconditional model is always called without them.
    def encoder_params(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The parameters of q(z|x) [B, P] from the encoder."""
        return self.encoder(x)

    def decoder_params(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The parameters of p(x|z) for latents z [..., L] from the decoder (which reads z1 of a
        two-layer z = [z1, z2])."""
        return self.decoder(z[..., : self.hparams.latent_dim] if self.upward is not None else z)

    def latent_layers(self) -> list[int]:
        """[L], or [L1, L2] for a two-layer model's z = [z1, z2]."""
        return [self.hparams.latent_dim, *([self.hparams.top_latents] if self.upward is not None else [])]

    def inference_parameters(self) -> list[torch.nn.Parameter]:
        """The encoder's parameters, and q(z2|z1)'s of a two-layer model."""
        return [*self.encoder.parameters(), *(self.upward.parameters() if self.upward is not None else [])]

    def posterior(self, x: Tensor, y: Tensor | None = None) -> Posterior:
        """q(z|x) for images x [B, C, H, W]."""
        return self.posterior_from_params(self.encoder_params(x, y))

    def posterior_from_params(self, params: Tensor) -> Posterior:
        """q(z|x) from the encoder's output [B, P]."""
        if self.upward is not None:
            return TwoLayerPosterior(DiagonalGaussian.from_params(params), self.upward)
        if self.flow is None:
            return self.posterior_family.from_params(params)
        gaussian = 2 * self.hparams.latent_dim
        return FlowPosterior(DiagonalGaussian.from_params(params[..., :gaussian]), self.flow, params[..., gaussian:])

    def terms(self, x: Tensor, q: Posterior | None = None, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example [B] terms of one pass: log p(x|z), KL, ELBO; ``kl_per_dim`` [B, L] (with the
        standard prior), and
        ``z`` [B, L] the sample of q(z|x) the pass decoded. ``q``: q(z|x) when the caller has it."""
        q = self.posterior(x, y) if q is None else q
        if self.estimator == "score_function" and self.training:
            z = q.rsample().detach()  # no pathwise gradient: the encoder learns through log q
            log_px_given_z = self.likelihood.log_prob(x, self.decoder_params(z, y))
            log_px_given_z = log_px_given_z + self.score_function_term(log_px_given_z.detach(), q.log_prob(z))
            log_q = None
        else:
            z, log_q = q.rsample_with_log_prob()
            log_px_given_z = self.likelihood.log_prob(x, self.decoder_params(z, y))
        # Closed form for N(0, I) and a Gaussian q; otherwise the Monte-Carlo estimate at the decoded
        # z (a mixture's per-dimension estimate, K x L per sample, is left to eval.py).
        kl, kl_per_dim = self.prior.kl(q, z, per_dim=self.prior.closed_form, log_q=log_q)
        terms = {"log_px_given_z": log_px_given_z, "kl": kl, "z": z, "elbo": objectives.elbo(log_px_given_z, kl)}
        if kl_per_dim is not None:
            terms["kl_per_dim"] = kl_per_dim
        return terms

    def score_function_term(self, f: Tensor, log_q: Tensor) -> Tensor:
        """Zero in value; its gradient is (f - b) * grad log q(z|x), the likelihood-ratio
        estimator of grad E_q[f] with baseline b (seeds: the REINFORCE / score-function gradient)."""
        surrogate = (f - self.baseline) * log_q
        with torch.no_grad():
            self.baseline.lerp_(f.mean(), 1 - self.baseline_decay)
        return surrogate - surrogate.detach()

    def objective(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """What a variant overrides: ``loss``, the scalar that is minimised (here -ELBO with weight
        beta), the per-example [B] terms ``log_px_given_z`` and ``kl`` (the ELBO is derived from
        their means), and anything else to log: every other scalar or [B] entry is logged as its
        batch mean under its own name (``beta``, ``iwae_bound``, ``tc``, ...)."""
        terms = self.terms(x, y=y)
        terms["loss"] = objectives.beta_vae_loss(terms["log_px_given_z"], terms["kl"], self.beta)
        return terms

    def log_weights(self, x: Tensor, num_samples: int, y: Tensor | None = None) -> Tensor:
        """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), z_k ~ q(z|x); [k, B]."""
        q = self.posterior(x, y)
        z, log_q = q.rsample_with_log_prob(num_samples)
        return self.likelihood.log_prob(x, self.decoder_params(z, y)) + self.prior.log_prob(z) - log_q

    @torch.no_grad()
    def importance_sampling(
        self, x: Tensor, k: int, chunk: int = 100, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Per example [B]: the k-sample bound L_k = log (1/k) sum_k w_k (Burda et al. 2016), which
        tends to log p(x) as k grows, and the mean of log p(x|z_k) over the same samples (for a
        low-variance ELBO). Samples are drawn ``chunk`` at a time and folded into a running
        logsumexp, so memory is bounded by ``chunk``, not ``k``."""
        posterior_params = self.encoder_params(x, y)
        log_sum_w = torch.full((x.shape[0],), -math.inf, device=x.device)
        sum_log_px = torch.zeros(x.shape[0], device=x.device)
        with self.prior.held():  # a VampPrior's components: one encoder pass for every chunk
            for start in range(0, k, chunk):
                chunk_log_sum_w, chunk_sum_log_px = self.importance_chunk(x, posterior_params, min(chunk, k - start), y)
                log_sum_w = torch.logaddexp(log_sum_w, chunk_log_sum_w)
                sum_log_px += chunk_sum_log_px
        return log_sum_w - math.log(k), sum_log_px / k

    def importance_chunk(
        self, x: Tensor, posterior_params: Tensor, num_samples: int, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """For ``num_samples`` draws z_k ~ q(z|x) (q given by the encoder's output
        ``posterior_params``): log sum_k w_k and sum_k log p(x|z_k), each [B]."""
        q = self.posterior_from_params(posterior_params)
        z, log_q = q.rsample_with_log_prob(num_samples)
        log_px_given_z = self.likelihood.log_prob(x, self.decoder_params(z, y))
        log_w = log_px_given_z + self.prior.log_prob(z) - log_q
        return torch.logsumexp(log_w, dim=0), log_px_given_z.sum(0)

    def iwae_bound(self, x: Tensor, k: int, chunk: int = 100, y: Tensor | None = None) -> Tensor:
        """L_k per example [B]; see ``importance_sampling``."""
        return self.importance_sampling(x, k, chunk, y)[0]

    @torch.no_grad()
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The mean and standard deviation of q(z|x) per latent, each [B, L] (a flow posterior, whose
        mean and spread have no closed form: the flow's image of its base mean, and the base's spread;
        for a full-covariance
        posterior, the square roots of the covariance's diagonal)."""
        q = self.posterior(x, y)
        return q.mu, q.std

    @torch.no_grad()
    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x|z] for latents z [B, L]: images [B, C, H, W]."""
        return self.likelihood.mean(self.decoder_params(z, y))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, k: int = 1000, chunk: int = 100, y: Tensor | None = None) -> Tensor:
        """log p(x) per image [B], nats: the k-sample importance-weighted bound, which tends to
        log p(x) as k grows (5000 in the literature)."""
        return self.importance_sampling(x, k, chunk, y)[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x|z] at the posterior mean z = mu(x)."""
        return self.likelihood.mean(self.decoder_params(self.posterior(x, y).mu, y))

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """E[x|z] for z drawn from the prior."""
        z = self.prior.sample(num_samples, generator).to(self.device)
        return self.likelihood.mean(self.decoder_params(z, y))

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

    def step_metrics(self, x: Tensor, **given: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss to minimise and the batch means that every other metric derives from: recon
        (-log p(x|z)), kl, and every other scalar or per-example term the objective returns.
        ``given``: the labels of a conditional model (``y``), nothing for the others."""
        terms = self.objective(x, **given)
        metrics = {"loss": terms["loss"], "recon": -terms["log_px_given_z"].mean(), "kl": terms["kl"].mean()}
        metrics.update(
            {name: value.mean() for name, value in terms.items() if name not in TERMS_LOGGED_APART and value.dim() <= 1}
        )
        return terms["loss"], {name: value.detach().float() for name, value in metrics.items()}

    def eval_metrics(self, x: Tensor, stage: str, **given: Tensor) -> dict[str, Tensor]:
        if stage == "test" and self.test_k:
            return {"iwae_bound": self.iwae_bound(x, self.test_k, **given).mean()}
        return {}
