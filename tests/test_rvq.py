"""Residual vector quantization (model/quantizer=rvq): the greedy residual search against a
brute-force loop, the straight-through sum and RQ-VAE's commitment in closed form, and a VQ-VAE
trained over it whose reconstruction improves with each codebook it decodes, with the learned
prior over its [H, W, Q] code maps."""

import csv
import math

import pytest
import torch

from test_fsq import train_prior
from vaelab.checkpoints import load_checkpoint, model_from_checkpoint
from vaelab.config import compose_config
from vaelab.eval import evaluate_checkpoint
from vaelab.quantizer import ResidualVectorQuantizer, VectorQuantizer
from vaelab.training import train

BOOK = dict(num_codes=6, code_dim=3, kmeans_init=False, restart_dead=False)


def test_each_stage_takes_the_nearest_code_to_what_the_previous_stages_left():
    torch.manual_seed(0)
    rvq = ResidualVectorQuantizer(3, **BOOK).eval()
    z = torch.randn(2, 3, 4, 5)
    z_q, terms = rvq(z)
    books = [stage.codebook for stage in rvq.stages]
    vectors = z.permute(0, 2, 3, 1).reshape(-1, 3)
    expected, approximations = [], []
    for v in vectors:  # one vector at a time, every code of every stage compared
        residual, picked, partial = v.clone(), [], torch.zeros(3)
        for book in books:
            k = min(range(len(book)), key=lambda j: float(((residual - book[j]) ** 2).sum()))
            picked.append(k)
            partial = partial + book[k]
            residual = v - partial
        expected.append(picked)
        approximations.append(partial)
    assert terms["indices"].reshape(-1, 3).tolist() == expected
    approximations = torch.stack(approximations).view(2, 4, 5, 3).permute(0, 3, 1, 2)
    assert torch.allclose(z_q, approximations, atol=1e-6)  # the forward's value: the sum of the codes
    assert torch.allclose(rvq.lookup(terms["indices"]), approximations, atol=1e-6)
    assert torch.equal(rvq.indices(z), terms["indices"])
    first_two = approximations - torch.stack([books[2][k[2]] for k in expected]).view(2, 4, 5, 3).permute(0, 3, 1, 2)
    assert torch.allclose(rvq.lookup(terms["indices"][..., :2]), first_two, atol=1e-6)  # decoding at depth 2
    for i in range(3):  # residual_i: the mean squared residual after stage i
        partial = rvq.lookup(terms["indices"][..., : i + 1])
        assert float(terms[f"residual_{i + 1}"]) == pytest.approx(float((z - partial).pow(2).mean()), rel=1e-5)


def test_one_stage_trains_exactly_as_the_vector_quantizer_restarts_included():
    """In training each stage moves its codebook (EMA) and restarts dead codes after matching: the
    sum the decoder sees must be of the codes matched, as VectorQuantizer's output is."""
    torch.manual_seed(3)
    settings = dict(num_codes=8, code_dim=3, kmeans_iterations=3, dead_threshold=0.9, usage_decay=0.5, seed=5)
    vq, rvq = VectorQuantizer(**settings).train(), ResidualVectorQuantizer(1, **settings).train()
    restarts = 0
    for _ in range(8):
        z = 2 * torch.randn(4, 3, 2, 2) + 3 * torch.rand(1)
        (a, terms_a), (b, terms_b) = vq(z), rvq(z)
        restarts += len(vq.restarted)
        assert torch.equal(a, b) and torch.equal(terms_a["indices"], terms_b["indices"][..., 0])
        assert float(terms_a["commitment"]) == float(terms_b["commitment"])
    assert restarts > 0 and torch.equal(vq.codebook, rvq.stages[0].codebook)


def test_the_gradient_passes_straight_through_the_sum_and_each_stage_commits_to_its_partial_sum():
    """dz_q/dz_e = I (once, not once per stage), and the commitment is RQ-VAE's (eq. 6)
    sum_i |z_e - sg(sum_{j<=i} e^(j))|^2 as means per element, with its gradient."""
    torch.manual_seed(1)
    rvq = ResidualVectorQuantizer(3, **BOOK, beta=0.5).eval()
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    z_q, terms = rvq(z)
    (grad,) = torch.autograd.grad(z_q.sum(), z, retain_graph=True)
    assert torch.equal(grad, torch.ones_like(z))
    partial_sums = [rvq.lookup(terms["indices"][..., : i + 1]) for i in range(3)]
    commitment = sum((z - p).pow(2).mean() for p in partial_sums)
    assert float(terms["commitment"]) == pytest.approx(float(commitment), rel=1e-5)
    assert float(terms["vq_loss"]) == pytest.approx(0.5 * float(commitment), rel=1e-5)  # EMA books: no codebook loss
    (got,) = torch.autograd.grad(terms["vq_loss"], z)
    (want,) = torch.autograd.grad(0.5 * commitment, z)
    assert torch.allclose(got, want, atol=1e-6)


def test_the_prior_over_residual_codes_embeds_each_codebooks_codes_apart():
    """Code k of stage 1 and code k of stage 2 are different vectors: the prior's input embeds
    them apart (position i of a flattened [H, W, Q] map is stage i mod Q)."""
    from vaelab.models.prior import CausalTransformer

    torch.manual_seed(0)
    prior = CausalTransformer(num_codes=5, length=6, width=8, layers=1, heads=2, dropout=0.0, depth=3).eval()
    assert prior.embed.num_embeddings == 15 and prior.offsets.tolist() == [0, 5, 10, 0, 5, 10]
    codes = torch.tensor([[2, 2, 2, 0, 0, 0]])  # code 2 of stages 0, 1 and 2 at one position
    with torch.no_grad():
        embedded = prior.embed(codes[:, :-1] + prior.offsets[:5])
    for stage in range(3):
        assert torch.equal(embedded[0, stage], prior.embed.weight[2 + 5 * stage])


QUICK = [
    "trainer.enable_progress_bar=false",
    "size=small",
    "model=vqvae",
    "model/quantizer=rvq",
    "model.quantizer.num_quantizers=3",
    "model.quantizer.num_codes=16",
    "model.quantizer.code_dim=8",
    "trainer.log_every_n_steps=5",
]


def test_a_vqvae_over_rvq_reconstructs_better_with_each_codebook_and_its_prior_learns_the_codes(tmp_path, capsys):
    vq = train(compose_config([*QUICK, "trainer.max_epochs=4"], tmp_path / "vq"))
    assert vq["test/kl"] == pytest.approx(4 * 3 * math.log(16))  # 2x2 positions, 3 indices each
    rows = [r for r in csv.DictReader(open(tmp_path / "vq" / "csv" / "metrics.csv")) if r.get("train/residual_1")]
    # Each stage's residual is logged (it falls with depth by construction, trained or not; the
    # effect of training is the reconstruction by depth below).
    last = {name: float(rows[-1][f"train/residual_{name}"]) for name in (1, 2, 3)}
    assert last[1] > last[2] > last[3] > 0
    ckpt = tmp_path / "vq" / "checkpoints" / "best.ckpt"
    cfg = compose_config([f"ckpt_path={ckpt}", "pictures=false"], tmp_path / "eval", config_name="eval")
    results = evaluate_checkpoint(cfg)
    depth = results["recon_by_depth"]
    # Each added codebook reconstructs the test images better (measured: 26.82, 26.49, 26.41 nats); a
    # decoder trained on one batch gains under 0.003 nats from the finer stages (46.038, 46.036, 46.035).
    assert depth[0] - depth[1] > 0.1 and depth[1] - depth[2] > 0.03
    assert depth[2] == pytest.approx(results["recon"], rel=1e-5)
    assert "by depth:       1: " in capsys.readouterr().out  # eval.py's summary shows them
    model = model_from_checkpoint(load_checkpoint(str(ckpt))).eval()
    x = torch.rand(4, *model.image_shape).round()
    indices = model.encode_to_indices(x)  # the explicit API: images -> [B, H', W', Q] -> images
    assert indices.shape == (4, 2, 2, 3) and indices.max() < 16
    assert torch.allclose(model.decode_indices(indices), model.reconstruct(x))
    prior = train_prior(ckpt, tmp_path / "prior")
    assert prior["test/prior_nll"] < 4 * 3 * math.log(16)  # better than uniform over the 12 indices of a map
    assert prior["test/recon"] == pytest.approx(vq["test/recon"], rel=1e-4)


def test_the_residual_quantizer_refuses_settings_it_does_not_have(tmp_path):
    from vaelab.config import check_config
    from vaelab.errors import UserError

    with pytest.raises(UserError, match="model.quantizer.cosine is not a setting of ResidualVectorQuantizer"):
        check_config(compose_config([*QUICK, "+model.quantizer.cosine=true"], tmp_path))
    with pytest.raises(UserError, match="model.quantizer.num_quantizers must be a whole number ≥ 1"):
        check_config(compose_config([*QUICK, "model.quantizer.num_quantizers=0"], tmp_path))
