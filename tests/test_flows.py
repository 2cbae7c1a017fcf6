"""Flow posteriors (model.posterior=planar|iaf): each flow's log-determinant against the full
Jacobian (torch.func.jacrev), the planar steps' invertibility, the IAF's triangular Jacobian, the
density by the change of variables against a brute-force inversion on a 2-D grid (where it also
integrates to one), the VAE's wiring (a flow at the identity is the diagonal posterior), runs
whose bound improves, and refusals."""

import copy
import csv
import math

import pytest
import torch

from vaelab.config import compose_config
from vaelab.distributions import DiagonalGaussian
from vaelab.errors import UserError
from vaelab.eval import evaluate_checkpoint
from vaelab.flows import FlowPosterior, InverseAutoregressiveFlow, PlanarFlow
from vaelab.models import IWAE, VAE
from vaelab.training import check_config, train

ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3}
MLP = {"kind": "mlp", "hidden_dims": [16], "activation": "tanh"}


def jacobian_log_det(flow, z: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log |det dz_K/dz_0| per example from the full Jacobian, and the Jacobians [B, L, L]."""

    def one(z_row, context_row):
        return flow(z_row[None], context_row[None])[0][0]

    jacobians = torch.func.vmap(torch.func.jacrev(one))(z, context)
    return torch.linalg.slogdet(jacobians)[1], jacobians


def flows(latent: int = 3):
    return [PlanarFlow(latent, 5), InverseAutoregressiveFlow(latent, 4, 16)]


@pytest.mark.parametrize("index", [0, 1], ids=["planar", "iaf"])
def test_the_log_determinant_is_the_jacobians(index):
    torch.manual_seed(0)
    flow = flows()[index].double()
    z = torch.randn(6, 3, dtype=torch.float64)
    context = torch.randn(6, flow.context_size, dtype=torch.float64) * 2
    _, log_det = flow(z, context)
    expected, _ = jacobian_log_det(flow, z, context)
    torch.testing.assert_close(log_det, expected, atol=1e-9, rtol=1e-9)
    # Samples [S, B, L] share their example's context.
    many = torch.randn(4, 6, 3, dtype=torch.float64)
    z_many, log_det_many = flow(many, context)
    z_one, log_det_one = flow(many[2], context)
    torch.testing.assert_close(z_many[2], z_one)
    torch.testing.assert_close(log_det_many[2], log_det_one)


def test_planar_steps_stay_invertible_whatever_the_encoder_says():
    """u = -5 w would fold the plane (w^T u < -1); the reparameterized u_hat has w^T u_hat > -1."""
    flow = PlanarFlow(2, 1)
    w = torch.tensor([[1.0, 2.0]])
    context = torch.cat([-5 * w, w, torch.zeros(1, 1)], -1)
    ((u_hat, w_out, _),) = flow.step_parameters(context)
    assert float((w_out * u_hat).sum()) > -1
    moved = u_hat - (-5 * w)
    along = (moved * w).sum(-1, keepdim=True) / (w * w).sum(-1, keepdim=True) * w
    torch.testing.assert_close(moved, along)  # u is moved along w only (appendix A.1)
    assert float(moved.norm()) > 1  # and moved: w^T u = -25 was far below -1
    _, log_det = flow(torch.randn(1000, 2), context.expand(1000, -1))
    assert torch.isfinite(log_det).all()


def test_each_iaf_step_is_triangular_in_its_order_with_sigma_on_the_diagonal():
    torch.manual_seed(1)
    flow = InverseAutoregressiveFlow(4, 2, 16)
    z, context = torch.randn(3, 4), torch.randn(3, 16)
    for step, lower in zip(flow.steps, (True, False)):
        single = InverseAutoregressiveFlow(4, 1, 16)
        single.steps[0] = step
        _, jacobians = jacobian_log_det(single, z, context)
        triangle = torch.tril(jacobians) if lower else torch.triu(jacobians)
        torch.testing.assert_close(jacobians, triangle)
        _, s = step(z, context)
        torch.testing.assert_close(jacobians.diagonal(dim1=-2, dim2=-1), torch.sigmoid(s))


def invert(flow, y: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """z_0 with flow(z_0) = y, solved without the flow's own code path: planar steps by bisection on
    alpha = w^T z (w^T y = alpha + w^T u_hat tanh(alpha + b) rises with alpha), IAF steps by the
    autoregressive fixed point (exact after L rounds: dimension i needs only the earlier ones)."""
    if isinstance(flow, PlanarFlow):
        for u_hat, w, b in reversed(flow.step_parameters(context)):
            target, wu = (w * y).sum(-1), (w * u_hat).sum(-1)
            low, high = torch.full_like(target, -100.0), torch.full_like(target, 100.0)
            for _ in range(60):
                mid = (low + high) / 2
                above = mid + wu * torch.tanh(mid + b) > target
                low, high = torch.where(above, low, mid), torch.where(above, mid, high)
            y = y - u_hat * torch.tanh((low + high) / 2 + b).unsqueeze(-1)
        return y
    for step in reversed(flow.steps):
        z = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, s = step(z, context.expand(*y.shape[:-1], -1))
            sigma = torch.sigmoid(s)
            z = (y - (1 - sigma) * m) / sigma
        y = z
    return y


@pytest.mark.parametrize("index", [0, 1], ids=["planar", "iaf"])
def test_the_density_by_change_of_variables_integrates_to_one_and_matches_brute_force(index):
    torch.manual_seed(2)
    flow = [PlanarFlow(2, 3), InverseAutoregressiveFlow(2, 2, 8)][index]
    base = DiagonalGaussian(torch.tensor([[0.3, -0.2]]), torch.tensor([[-0.4, 0.2]]))
    context = torch.randn(1, flow.context_size) * 0.7  # planar: w^T u_hat down to -0.74, a strong squeeze
    q = FlowPosterior(base, flow, context)  # in float32, as in training
    flow, context = copy.deepcopy(flow).double(), context.double()  # the brute force, in float64

    def brute_force_log_density(y):  # y [N, 2]: invert, then log q_0(z_0) - log |det| at z_0
        z0 = invert(flow, y, context.expand(len(y), -1))
        _, log_det = flow(z0, context.expand(len(y), -1))
        mu, log_var = base.mu.double(), base.logvar.double()
        log_q0 = (-0.5 * (math.log(2 * math.pi) + log_var + (z0 - mu) ** 2 / log_var.exp())).sum(-1)
        return log_q0 - log_det, z0

    with torch.no_grad():
        axis = torch.linspace(-8, 8, 401, dtype=torch.float64)
        grid = torch.cartesian_prod(axis, axis)
        log_density, z0 = brute_force_log_density(grid)
        torch.testing.assert_close(flow(z0, context.expand(len(grid), -1))[0], grid, atol=1e-8, rtol=0)
        mass = log_density.exp().sum() * (axis[1] - axis[0]) ** 2
        assert abs(float(mass) - 1) < 1e-3, float(mass)
        assert float(log_density.exp().max() * (axis[1] - axis[0]) ** 2) < 5e-3  # no cell holds much: resolved
        z, log_q = q.rsample_with_log_prob(500)  # [500, 1, 2], the posterior's own samples
        expected, _ = brute_force_log_density(z[:, 0].double())
        torch.testing.assert_close(log_q[:, 0].double(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("posterior", ["planar", "iaf"])
def test_a_flow_at_the_identity_gives_the_diagonal_posteriors_numbers(posterior):
    """With the encoder's context outputs zeroed the planar flow is the identity; the IAF with its
    gates shut (sigma = 1) is too. The importance-sampled bound is then the base Gaussian's, draw
    for draw, computed here from the encoder's first 2L outputs alone."""
    torch.manual_seed(3)
    model = VAE([1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, posterior=posterior, flow_steps=3, flow_hidden=8)
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight[6:] = 0
        last.bias[6:] = 0
        if posterior == "iaf":
            for step in model.flow.steps:
                step.outer.bias[3:] = 60.0  # sigma = 1 to float precision: z passes unchanged
    x = torch.rand(8, 1, 4, 4).round()
    torch.manual_seed(4)
    bound = model.importance_sampling(x, 20)[0]
    torch.manual_seed(4)
    with torch.no_grad():
        q = DiagonalGaussian.from_params(model.encoder(x)[:, :6])
        z = q.rsample(20)
        log_w = model.likelihood.log_prob(x, model.decoder(z)) + model.prior.log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(bound, torch.logsumexp(log_w, 0) - math.log(20), atol=1e-5, rtol=1e-5)
    assert isinstance(model.posterior(x), FlowPosterior)


QUICK = [
    "trainer.enable_progress_bar=false",
    "size=small",
    "size.latent_dim=4",
    "trainer.max_epochs=10",
    "model.test_k=50",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("flows")
    settings = {"planar": ["model.posterior=planar"], "iaf": ["model.posterior=iaf", "model.flow_hidden=32"]}
    return {
        name: (folder / name, train(compose_config([*QUICK, *extra], folder / name)))
        for name, extra in settings.items()
    }


@pytest.mark.parametrize("name", ["planar", "iaf"])
def test_a_flow_posterior_trains_and_eval_reports_its_estimated_kl(runs, name, tmp_path):
    run_dir, metrics = runs[name]
    val = [float(r["val/elbo"]) for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")) if r.get("val/elbo")]
    assert len(val) == 10 and val[-1] > val[0] + 2  # the bound improved over the run
    assert metrics["test/iwae_bound"] >= metrics["test/elbo"] - 0.05
    cfg = compose_config([f"ckpt_path={run_dir}/checkpoints/best.ckpt", "k=100"], tmp_path, config_name="eval")
    results = evaluate_checkpoint(cfg)
    assert results["kl_estimate"].startswith("Monte Carlo") and results["kl_per_dim"] is None
    assert results["nll"] <= -results["elbo"] + 0.05 and abs(results["elbo"] - metrics["test/elbo"]) < 0.5
    assert (tmp_path / "images" / "traversals.png").is_file()


@pytest.mark.parametrize("prior", [None, {"_target_": "vaelab.priors.MixtureOfGaussiansPrior", "components": 3}])
def test_the_iwae_bound_and_the_kl_of_a_flow_posterior_use_log_q_at_the_flows_output(prior):
    """log w = log p(x|z_K) + log p(z_K) - (log q_0(z_0) - log |det dz_K/dz_0|), the log-determinant
    here from the full Jacobian, not the flow's own sum; the same draws as the model's."""
    torch.manual_seed(5)
    extra = {"prior": prior} if prior else {}
    model = IWAE(
        [1, 4, 4], 3, MLP, {"name": "bernoulli"}, ADAM, posterior="iaf", flow_steps=2, flow_hidden=8, k=4, **extra
    )
    x = torch.rand(8, 1, 4, 4).round()
    torch.manual_seed(6)
    _, metrics = model.step_metrics(x)
    torch.manual_seed(6)
    with torch.no_grad():
        params = model.encoder(x)
        base = DiagonalGaussian.from_params(params[:, :6])
        z0 = base.rsample(4)  # [4, 8, 3]
        context = params[:, 6:]
        z = model.flow(z0, context)[0]
        log_det = torch.stack([jacobian_log_det(model.flow, z0[s], context)[0] for s in range(4)])
        log_q = base.log_prob(z0) - log_det
        log_px = model.likelihood.log_prob(x, model.decoder(z))
        log_w = log_px + model.prior.log_prob(z) - log_q
    expected = (torch.logsumexp(log_w, 0) - math.log(4)).mean()
    torch.testing.assert_close(metrics["iwae_bound"], expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(metrics["kl"], (log_px - log_w).mean(), atol=1e-4, rtol=1e-5)  # MC KL, same draws
    loss, _ = model.step_metrics(x)
    loss.backward()
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    assert last.weight.grad[6:].abs().sum() > 0  # the encoder's context rows learn
    assert all(p.grad.abs().sum() > 0 for p in model.flow.parameters())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model=beta_tcvae", "model.posterior=planar"], "model.posterior=planar composes with model=vae"),
        (["model.posterior=iaf", "model/prior=vamp"], "model/prior=vamp mixes"),
        (["model=iwae", "model.posterior=planar", "model.dreg=true"], "model.dreg=true needs a Gaussian posterior"),
        (["model.posterior=planar", "model.estimator=score_function"], "trains with reparameterized gradients"),
        (["model=beta_vae", "model.posterior=iaf", "model.free_bits=0.5"], "model.free_bits needs a per-dimension KL"),
        (["model.flow_steps=4"], "model.flow_steps has no effect with model.posterior=diagonal"),
        (
            ["model.posterior=planar", "model.flow_hidden=64"],
            "model.flow_hidden has no effect with model.posterior=planar",
        ),
        (["model.posterior=iaf", "model.flow_hidden=2"], "model.flow_hidden=2 is too few for 4 latents"),
    ],
)
def test_settings_a_flow_cannot_honour_are_refused(overrides, message, tmp_path):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_config(compose_config([*QUICK, *overrides], tmp_path))
