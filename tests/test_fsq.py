"""Finite scalar quantization (model/quantizer=fsq): its grid, indices and straight-through
gradient against a brute-force search and closed forms, and a VQ-VAE and its learned prior
trained over its codes."""

import itertools
import math

import pytest
import torch

from vaelab.checkpoints import load_checkpoint
from vaelab.config import compose_config
from vaelab.quantizer import FiniteScalarQuantizer
from vaelab.training import train

LEVELS = [4, 3, 5]


def test_each_vector_goes_to_the_nearest_point_of_the_implicit_grid():
    """Brute force: every one of the prod(levels) codes, decoded by lookup, and the nearest one to
    each bounded vector f(z)/(L // 2); the index of the forward's code is that code's."""
    fsq = FiniteScalarQuantizer(LEVELS)
    assert fsq.num_codes == 60 and fsq.code_dim == 3
    every = torch.arange(60).view(1, 60, 1)  # as a [B, H, W] map
    grid = fsq.lookup(every)[0, :, :, 0].T  # [60, 3], each code's point in [-1, 1]
    assert len({tuple(p.tolist()) for p in grid}) == 60  # 60 distinct points
    for d, levels in enumerate(LEVELS):  # channel d takes its L_d values, k / (L // 2) for the grid's integers k
        half = levels // 2
        assert sorted(set(grid[:, d].tolist())) == pytest.approx([(k - half) / half for k in range(levels)])
    z = 3 * torch.randn(2, 3, 4, 5)
    z_q, terms = fsq(z)
    bounded = fsq.bound(z.permute(0, 2, 3, 1).reshape(-1, 3)) / torch.tensor([2.0, 1.0, 2.0])
    nearest = torch.cdist(bounded, grid).argmin(1)
    assert torch.equal(terms["indices"].flatten(), nearest)
    assert torch.equal(fsq.indices(z), terms["indices"])
    assert torch.allclose(fsq.lookup(terms["indices"]), z_q)  # decode_indices' lookup is the forward's code
    assert float(terms["vq_loss"]) == 0  # nothing to learn in the codebook


def test_the_bound_reaches_exactly_the_levels_of_each_channel():
    fsq = FiniteScalarQuantizer([8, 5])
    rounded = fsq.bound(torch.linspace(-20, 20, 10001).unsqueeze(1).expand(-1, 2)).round()
    assert sorted(set(rounded[:, 0].tolist())) == list(range(-4, 4))  # even L: -L/2 .. L/2 - 1
    assert sorted(set(rounded[:, 1].tolist())) == list(range(-2, 3))  # odd L: -(L-1)/2 .. (L-1)/2


def test_the_gradient_passes_straight_through_the_rounding():
    """d z_q / d z = f'(z) / (L // 2), with f(z) = tanh(z + s) h - o: the rounding's gradient is the identity."""
    fsq = FiniteScalarQuantizer([8, 5])
    z = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    z_q, _ = fsq(z)
    (grad,) = torch.autograd.grad(z_q.sum(), z)
    levels = torch.tensor([8.0, 5.0], dtype=torch.float64).view(1, 2, 1, 1)
    half = (levels - 1) * (1 + 1e-3) / 2
    shift = torch.atanh(torch.tensor([0.5, 0.0], dtype=torch.float64).view(1, 2, 1, 1) / half)
    expected = (1 - torch.tanh(z.detach() + shift) ** 2) * half / (levels // 2)
    assert torch.allclose(grad, expected)


def test_indices_are_the_mixed_radix_numbers_of_the_digits():
    fsq = FiniteScalarQuantizer(LEVELS)
    for index, digits in enumerate(itertools.product(*[range(n) for n in reversed(LEVELS)])):
        digits = list(reversed(digits))  # the first channel varies fastest
        grid = torch.tensor([[d - n // 2 for d, n in zip(digits, LEVELS)]], dtype=torch.float32)
        assert int(fsq.to_indices(grid)) == index


QUICK = ["trainer.enable_progress_bar=false", "size=small", "model=vqvae", "model/quantizer=fsq"]


def train_prior(vqvae_ckpt, folder):
    """Two epochs of the learned prior over the codes of the VQ-VAE at ``vqvae_ckpt``; its metrics."""
    overrides = ["model=vqvae_prior", f"prior.vqvae_ckpt={vqvae_ckpt}", "trainer.max_epochs=2"]
    return train(compose_config([*overrides, "trainer.enable_progress_bar=false"], folder))


def test_a_vqvae_and_its_prior_train_over_fsq_codes(tmp_path):
    vq = train(compose_config([*QUICK, "model.quantizer.levels=[3,3]", "trainer.max_epochs=3"], tmp_path / "vq"))
    assert 0 < vq["test/codes_used"] <= 1 and vq["test/vq"] == 0 and vq["test/kl"] == pytest.approx(4 * math.log(9))
    ckpt = tmp_path / "vq" / "checkpoints" / "best.ckpt"
    assert load_checkpoint(str(ckpt))["hyper_parameters"]["quantizer"]["_target_"].endswith("FiniteScalarQuantizer")
    prior = train_prior(ckpt, tmp_path / "prior")
    assert prior["test/prior_nll"] < 4 * math.log(9)  # better than uniform over the 9 codes of each of 2x2 positions
    assert prior["test/recon"] == pytest.approx(vq["test/recon"], rel=1e-4)  # the frozen first stage


def test_the_quantizer_group_refuses_the_other_quantizers_settings(tmp_path):
    from vaelab.config import check_config
    from vaelab.errors import UserError

    with pytest.raises(UserError, match="model.quantizer.num_codes is not a setting of FiniteScalarQuantizer"):
        check_config(compose_config([*QUICK, "+model.quantizer.num_codes=64"], tmp_path))
    with pytest.raises(UserError, match="model.quantizer.levels must"):
        check_config(compose_config([*QUICK, "model.quantizer.levels=[]"], tmp_path))
