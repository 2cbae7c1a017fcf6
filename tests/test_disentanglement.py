"""The disentanglement metrics against answers known in advance, on a toy ground truth whose
observations are the factor values themselves."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

from vaelab.disentanglement import (
    dci_completeness,
    dci_disentanglement,
    dci_from_codes,
    discrete_mutual_information,
    discretize,
    disentanglement_metrics,
    factor_vae,
    mig_from_codes,
    mutual_information,
    sample_codes,
    sap_from_codes,
)
from vaelab.errors import UserError


class Grid:
    """Independent uniform factors on 0..size-1; an observation is the factor values, [n, F, 1, 1]."""

    def __init__(self, *sizes):
        self.factor_sizes = list(sizes)
        self.factor_names = [f"v{j}" for j in range(len(sizes))]

    def sample_factors(self, n, generator):
        return torch.stack([torch.randint(size, (n,), generator=generator) for size in self.factor_sizes], 1)

    def observations(self, factors):
        return factors.float()[:, :, None, None]


def values(x):
    return x.flatten(1)


def latents(*columns):
    """A representation built from the factor values: each column a function of v [n, F]."""
    return lambda x: torch.stack([column(values(x)) for column in columns], 1)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class Noise:
    """A representation that ignores the observation: fresh N(0, 1) latents every call."""

    def __init__(self, dims, seed=1):
        self.dims, self.generator = dims, seeded(seed)

    def __call__(self, x):
        return torch.randn(len(x), self.dims, generator=self.generator)


# Factors 0..3 of sizes 4, 10, 20 and 7, permuted, rescaled (one flipped) and shifted: a latent
# per factor, each a one-to-one affine function of it.
PERFECT = latents(
    lambda v: 0.5 * v[:, 2] + 1.0,
    lambda v: -3.0 * v[:, 0] + 5.0,
    lambda v: 2.0 * v[:, 3] - 2.0,
    lambda v: 0.1 * v[:, 1],
)
PERFECT_FACTOR = [2, 0, 3, 1]  # the factor of each latent


def test_the_estimates_of_mutual_information_and_the_bins_are_sklearns_and_numpys():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 300), rng.integers(0, 7, 300)
    b[:100] = a[:100]  # dependent in part
    for x, y in ((a, b), (a, a), (b, a + 10 * b)):
        assert discrete_mutual_information(torch.from_numpy(x), torch.from_numpy(y)) == pytest.approx(
            mutual_info_score(x, y), rel=1e-12, abs=1e-15
        )
    codes = torch.from_numpy(rng.normal(size=(500, 3)))
    codes[:, 2] = 4.0  # a constant latent falls in one bin
    for i in range(3):
        x = codes[:, i].numpy()
        expected = np.digitize(x, np.histogram(x, 20)[1][:-1]) - 1  # disentanglement_lib's discretizer, from 0
        assert np.array_equal(discretize(codes)[:, i].numpy(), expected)
    assert discretize(codes)[:, 0].max() == 19 and (discretize(codes)[:, 2] == discretize(codes)[0, 2]).all()


def test_the_factors_themselves_permuted_rescaled_and_shifted_score_perfectly():
    truth = Grid(4, 10, 20, 7)
    codes, factors = sample_codes(truth, PERFECT, 10_000, seeded())
    result = mig_from_codes(codes, factors)
    # Every size is at most 20, so each latent's 20 bins separate its factor's values and
    # I(z; v) = H(v): each factor's gap is H(v) less the largest (plug-in, slightly positive)
    # information another, independent factor's latent has about it.
    for j in range(4):
        others = max(mutual_info_score(factors[:, k], factors[:, j]) for k in range(4) if k != j)
        entropy = mutual_info_score(factors[:, j], factors[:, j])
        assert result.per_factor[j].item() == pytest.approx(1 - others / entropy, abs=1e-12)
    assert 0.995 < result.score < 1
    assert result.mutual_information.argmax(1).tolist() == PERFECT_FACTOR

    votes = factor_vae(truth, PERFECT, seeded(), num_variance_estimate=2000, num_train=1000, num_eval=500)
    assert votes.train_accuracy == votes.eval_accuracy == 1.0 and votes.num_active_dims == 4
    assert votes.classifier.tolist() == PERFECT_FACTOR

    train, test = sample_codes(truth, PERFECT, 300, seeded()), sample_codes(truth, PERFECT, 200, seeded(1))
    scores = dci_from_codes(*train, *test)
    assert scores.disentanglement > 0.999 and scores.completeness > 0.999
    assert scores.informativeness_train == scores.informativeness_test == 1.0
    assert scores.importance.argmax(1).tolist() == PERFECT_FACTOR
    # SAP for continuous factors (squared correlation): 1 less the largest R^2 of an independent latent.
    assert sap_from_codes(*train, *test, continuous=True).score > 0.99


def test_sap_of_discrete_factors_is_a_linear_classifiers_accuracy_on_one_latent():
    """disentanglement_lib's SAP for discrete factors: the test accuracy of a linear SVM on one
    latent. A binary factor is separated perfectly by its own latent, while a latent of an
    independent factor predicts it at chance (1/2); so each gap is about 1/2. One latent cannot
    carve a factor of many values into its intervals with a one-vs-rest linear classifier, so
    the accuracy of the right latent falls for larger factors: the score is well below 1 even
    for a perfect representation."""
    truth = Grid(2, 2, 2)
    rep = latents(lambda v: 4 * v[:, 1] - 1, lambda v: -v[:, 2], lambda v: 0.5 * v[:, 0])
    train, test = sample_codes(truth, rep, 2000, seeded()), sample_codes(truth, rep, 1000, seeded(1))
    result = sap_from_codes(*train, *test)
    own = result.score_matrix[[2, 0, 1], [0, 1, 2]]
    assert (own == 1.0).all()
    assert result.score == pytest.approx(0.5, abs=0.05)
    many = Grid(4, 10, 20, 7)
    train, test = sample_codes(many, PERFECT, 2000, seeded()), sample_codes(many, PERFECT, 1000, seeded(1))
    assert 0.15 < sap_from_codes(*train, *test).score < 0.5


def test_latents_of_pure_noise_score_zero_and_factor_vae_chance():
    truth = Grid(4, 10, 20, 7)
    noise = Noise(4)
    codes, factors = sample_codes(truth, noise, 10_000, seeded())
    assert mig_from_codes(codes, factors).score < 0.01
    few = Grid(3, 4, 5)  # gradient-boosted trees cost a tree per class and stage: fewer classes
    train, test = sample_codes(few, noise, 400, seeded()), sample_codes(few, noise, 200, seeded(1))
    scores = dci_from_codes(*train, *test)
    assert scores.disentanglement < 0.05 and scores.completeness < 0.05
    assert sap_from_codes(*train, *test).score < 0.03

    num_train, num_eval = 2000, 2000
    votes = factor_vae(truth, noise, seeded(), num_variance_estimate=2000, num_train=num_train, num_eval=num_eval)
    # Each vote is a uniformly random (factor, dimension) cell. The majority vote is right for a
    # new vote with probability 1/F; on its own training votes it scores the mean of
    # sum_d max_j votes[j, d] / N, simulated here.
    chance = 1 / 4
    assert abs(votes.eval_accuracy - chance) < 4 * math.sqrt(chance * (1 - chance) / num_eval)
    cells = np.random.default_rng(0).multinomial(num_train, np.full(16, 1 / 16), size=4000).reshape(4000, 4, 4)
    simulated = cells.max(1).sum(1) / num_train
    assert abs(votes.train_accuracy - simulated.mean()) < 4 * simulated.std()
    assert votes.train_accuracy > chance


def exact_mig_of_a_sum(size: int) -> float:
    """I(bin(v1 + v2); v1) / H(v1) for v1, v2 independent and uniform on 0..size-1, by enumerating
    the size^2 equally likely pairs; the sum 0..2 size - 2 cut into 20 equal-width bins."""
    v1, v2 = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    width = (2 * size - 2) / 20
    bins = np.minimum(np.floor((v1 + v2) / width), 19).astype(int).ravel()
    joint = np.zeros((20, size))
    np.add.at(joint, (bins, v1.ravel()), 1 / size**2)
    p_bin, p_v1 = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nonzero = joint > 0
    information = (joint[nonzero] * np.log(joint[nonzero] / (p_bin * p_v1)[nonzero])).sum()
    return information / math.log(size)


def test_latents_mixing_two_factors_give_the_gap_information_theory_predicts():
    """z1 = v1 + v2, z2 = v2, z3 = v3 with v1, v2 uniform on 16 values: z1 tells a fraction a of
    H(v1) (its 31 values share 20 bins, so less than without binning) and as much about v2.
    Factor v1's gap is a, v2's is 1 - a (z2 knows all of it, z1 the fraction a); v3's is 1."""
    a = exact_mig_of_a_sum(16)
    assert a == pytest.approx(0.1691, abs=1e-4)
    truth = Grid(16, 16, 5)
    codes, factors = sample_codes(
        truth, latents(lambda v: v[:, 0] + v[:, 1], lambda v: v[:, 1], lambda v: v[:, 2]), 20_000, seeded()
    )
    result = mig_from_codes(codes, factors)
    # The plug-in estimate is off by ~(bins - 1)(values - 1) / 2N nats, < 0.005 here after dividing by H.
    np.testing.assert_allclose(result.per_factor.numpy(), [a, 1 - a, 1], atol=0.01)
    assert result.score == pytest.approx(2 / 3, abs=0.01)
    # z1 = v1 + v2 and z2 = v1 - v2 tell each of v1, v2 the same fraction a: no gap for either.
    codes, factors = sample_codes(
        truth, latents(lambda v: v[:, 0] + v[:, 1], lambda v: v[:, 0] - v[:, 1], lambda v: v[:, 2]), 20_000, seeded()
    )
    result = mig_from_codes(codes, factors)
    np.testing.assert_allclose(result.per_factor.numpy(), [0, 0, 1], atol=0.01)
    np.testing.assert_allclose(result.mutual_information[:2, :2].numpy() / math.log(16), a, atol=0.01)


def test_more_values_than_bins_caps_the_gap_at_what_twenty_bins_can_tell():
    """A factor of 40 values, its own latent: the 20 bins hold two values each, so the latent
    tells log 20 of the factor's log 40 nats and its gap is at most log 20 / log 40 = 0.812."""
    truth = Grid(40, 5)
    codes, factors = sample_codes(truth, latents(lambda v: v[:, 0], lambda v: v[:, 1]), 20_000, seeded())
    result = mig_from_codes(codes, factors)
    assert result.per_factor[0].item() == pytest.approx(math.log(20) / math.log(40), abs=0.005)
    assert result.per_factor[1].item() == pytest.approx(1, abs=0.005)


def test_a_factor_in_two_latents_has_no_gap_and_lowers_completeness():
    truth = Grid(6, 4, 3)
    rep = latents(lambda v: v[:, 0], lambda v: 2 * v[:, 0] - 3, lambda v: v[:, 1], lambda v: v[:, 2])
    codes, factors = sample_codes(truth, rep, 10_000, seeded())
    result = mig_from_codes(codes, factors)
    assert result.per_factor[0].item() == pytest.approx(0, abs=1e-12)  # both latents tell all of v0
    assert result.per_factor[1:].min() > 0.99
    train, test = sample_codes(truth, rep, 400, seeded()), sample_codes(truth, rep, 200, seeded(1))
    scores = dci_from_codes(*train, *test)
    # v0's importance is shared by the two copies (the trees pick either): its completeness is
    # 1 - H(p, 1 - p) / log 4; the other factors' stay 1, each factor weighing 1/3.
    p = scores.importance[0, 0].item() / scores.importance[:2, 0].sum().item()
    assert 0.2 < p < 0.8
    shared = 1 + (p * math.log(p) + (1 - p) * math.log(1 - p)) / math.log(4)
    assert scores.completeness == pytest.approx((shared + 2) / 3, abs=0.002)
    assert scores.completeness < 0.9 and scores.disentanglement > 0.99  # each latent is still about one factor


def test_dci_of_known_importance_matrices():
    diagonal = torch.eye(5) * 5
    assert dci_disentanglement(diagonal) == pytest.approx(1) and dci_completeness(diagonal) == pytest.approx(1)
    assert dci_disentanglement(torch.zeros(10, 10)) == pytest.approx(0, abs=1e-7)
    assert dci_completeness(torch.zeros(10, 10)) == pytest.approx(0, abs=1e-7)
    redundant = torch.cat([diagonal, diagonal])  # two codes per factor
    assert dci_disentanglement(redundant) == pytest.approx(1)
    assert dci_completeness(redundant) == pytest.approx(1 - math.log(2) / math.log(10))
    one_code_two_factors = torch.cat([diagonal, diagonal], 1)
    assert dci_disentanglement(one_code_two_factors) == pytest.approx(1 - math.log(2) / math.log(10))
    assert dci_completeness(one_code_two_factors) == pytest.approx(1)
    assert dci_disentanglement(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])) == pytest.approx(1)


def test_factor_vae_prunes_collapsed_dimensions_and_names_the_others_by_their_own_index():
    truth = Grid(6, 8, 5)
    noise = torch.Generator().manual_seed(3)
    rep = latents(
        lambda v: torch.full((len(v),), 3.0),  # collapsed to a constant
        lambda v: v[:, 1],
        lambda v: 0.01 * torch.randn(len(v), generator=noise),  # nearly collapsed: standard deviation 0.01
        lambda v: v[:, 0],
        lambda v: v[:, 2],
    )
    result = factor_vae(truth, rep, seeded(), num_variance_estimate=1000, num_train=600, num_eval=300)
    assert result.num_active_dims == 3
    assert result.train_accuracy == result.eval_accuracy == 1.0
    assert result.classifier.tolist() == [-1, 1, -1, 0, 2]
    assert result.votes[:, [0, 2]].sum() == 0 and result.votes.sum() == 600
    collapsed = latents(lambda v: torch.zeros(len(v)), lambda v: 0.001 * v[:, 0])
    none = factor_vae(truth, collapsed, seeded(), num_variance_estimate=500, num_train=100, num_eval=100)
    assert (none.eval_accuracy, none.train_accuracy, none.num_active_dims) == (0.0, 0.0, 0)  # disentanglement_lib's 0


def test_constant_factors_are_left_out_and_the_information_matrix_labels_each_latent():
    truth = Grid(1, 6, 1, 5)  # like dSprites' colour: a factor with one value
    rep = latents(lambda v: v[:, 3], lambda v: -v[:, 1])
    information = mutual_information(truth, rep, seeded(), num_points=2000)
    assert information.shape == (2, 4) and (information[:, [0, 2]] == 0).all()
    assert information.argmax(1).tolist() == [3, 1]
    codes, factors = sample_codes(truth, rep, 2000, seeded())
    assert factors.shape == (2000, 2)
    assert torch.equal(mig_from_codes(codes, factors).mutual_information, information[:, [1, 3]])
    assert factor_vae(truth, rep, seeded(), 500, 200, 100).eval_accuracy == 1.0


SMALL = {"num_train": 200, "num_test": 100, "num_variance_estimate": 500, "num_votes_train": 200, "num_votes_eval": 100}


def test_a_seed_gives_the_same_scores_every_time():
    truth = Grid(2, 3, 4)
    mixing = torch.tensor([[1.0, 0.3, 0.0], [0.0, 1.0, 0.5], [0.2, 0.0, 1.0], [0.1, 0.1, 0.1]])

    def rep(x):  # deterministic, imperfect
        return torch.sin(values(x) @ mixing.T)

    first = disentanglement_metrics(truth, rep, seed=7, **SMALL)
    assert first == disentanglement_metrics(truth, rep, seed=7, **SMALL)
    assert first != disentanglement_metrics(truth, rep, seed=8, **SMALL)
    assert set(first) == {
        "mig",
        "factor_vae",
        "factor_vae_train",
        "factor_vae_active_dims",
        "dci_disentanglement",
        "dci_completeness",
        "dci_informativeness_train",
        "dci_informativeness_test",
        "sap",
    }
    assert all(0 <= value <= 1 for key, value in first.items() if key != "factor_vae_active_dims")


def test_representations_the_metrics_cannot_score_are_refused_in_one_line():
    truth = Grid(4, 5)
    with pytest.raises(UserError, match="this representation has only one"):
        disentanglement_metrics(truth, latents(lambda v: v[:, 0]), **SMALL)
    with pytest.raises(UserError, match=r"must be \[n, latents\]; for 200 observations it gave \[200, 2, 1, 1\]"):
        disentanglement_metrics(truth, lambda x: x, **SMALL)
    with pytest.raises(UserError, match="NaN or infinite"):
        disentanglement_metrics(truth, lambda x: values(x) / 0, **SMALL)
    with pytest.raises(UserError, match="no factor of the ground truth varies"):
        disentanglement_metrics(Grid(1, 1), lambda x: values(x), **SMALL)
