"""The MMD family (model=mmd_vae): the unbiased MMD estimate against a double loop, its expectation
against closed forms, and its effect read back from training runs."""

import csv
import math

import pytest
import torch

from vaelab.config import compose_config
from vaelab.objectives import mmd_unbiased
from vaelab.training import train


def double_loop(x, y, kernel, scale):
    """MMD^2_u written out pair by pair (Gretton et al. 2012, eq. 3)."""

    def k(a, b):
        d2 = float(((a - b) ** 2).sum())
        return math.exp(-d2 / scale) if kernel == "rbf" else scale / (scale + d2)

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_the_estimate_is_the_double_loop(kernel):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), 1 + torch.randn(5, 3, generator=g, dtype=torch.float64)
    assert float(mmd_unbiased(x, y, kernel, 2.5)) == pytest.approx(double_loop(x, y, kernel, 2.5), rel=1e-12)


def rbf_mmd_of_two_gaussians(d, mu, s1, s2, scale):
    """MMD^2 between N(0, s1^2 I) and N(mu, s2^2 I) under k = exp(-||x - y||^2 / C): for
    w ~ N(m, v I), E exp(-||w||^2 / C) = (1 + 2v / C)^(-d/2) exp(-||m||^2 / (C + 2v))."""

    def expected_k(m2, v):
        return (1 + 2 * v / scale) ** (-d / 2) * math.exp(-m2 / (scale + 2 * v))

    return expected_k(0, 2 * s1**2) + expected_k(0, 2 * s2**2) - 2 * expected_k(mu**2 * d, s1**2 + s2**2)


def test_its_expectation_is_zero_for_one_distribution_and_the_closed_form_for_two():
    g = torch.Generator().manual_seed(1)
    d, n, draws, scale = 2, 16, 4000, 4.0
    same = torch.stack(
        [
            mmd_unbiased(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g), "rbf", scale)
            for _ in range(draws)
        ]
    ).double()
    assert abs(same.mean()) < 3 * same.std() / math.sqrt(draws)  # unbiased: 0 in expectation
    assert (same < 0).any()  # an unbiased estimate of 0 goes negative
    mu, s1, s2 = 0.7, 1.0, 0.5
    other = torch.stack(
        [
            mmd_unbiased(torch.randn(n, d, generator=g) * s1, mu + s2 * torch.randn(n, d, generator=g), "rbf", scale)
            for _ in range(draws)
        ]
    ).double()
    expected = rbf_mmd_of_two_gaussians(d, mu, s1, s2, scale)
    assert abs(float(other.mean()) - expected) < 3 * float(other.std()) / math.sqrt(draws), (other.mean(), expected)
    assert expected > 0.05  # a difference the test can see


def val_rows(run):
    with open(run / "csv" / "metrics.csv") as f:
        return [row for row in csv.DictReader(f) if row.get("val/mmd")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same model trained with and without the MMD term (8 epochs on the digits)."""
    root = tmp_path_factory.mktemp("mmd")
    common = ["model=mmd_vae", "trainer.max_epochs=8", "trainer.enable_progress_bar=false", "size=small", "test=false"]
    for name, weight in (("without", 0), ("with", 100)):
        train(compose_config([*common, f"model.mmd_weight={weight}"], root / name))
    return root


def test_the_mmd_term_brings_the_aggregate_posterior_to_the_prior(runs):
    without, with_mmd = (float(val_rows(runs / name)[-1]["val/mmd"]) for name in ("without", "with"))
    assert with_mmd < without / 3, (with_mmd, without)


def test_the_logged_loss_is_its_weighted_terms(runs):
    for row in val_rows(runs / "with"):
        loss = float(row["val/recon"]) + 0.0 * float(row["val/kl"]) + 100 * float(row["val/mmd"])
        assert float(row["val/loss"]) == pytest.approx(loss, rel=1e-4), row
        # The ELBO logged is the true bound, whatever the weights.
        assert float(row["val/elbo"]) == pytest.approx(-(float(row["val/recon"]) + float(row["val/kl"])), rel=1e-5)
