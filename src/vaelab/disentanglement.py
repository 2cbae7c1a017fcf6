"""Disentanglement metrics of a representation against known factors of variation, as
google-research/disentanglement_lib defines them (its defaults, from the configs of its studies):

- MIG (Chen et al. 2018): each latent discretised into 20 equal-width bins, its mutual
  information with each factor; per factor the gap between the two most informative latents
  over the factor's entropy; averaged over factors. 10,000 points.
- FactorVAE score (Kim & Mnih 2018): a majority-vote classifier from "the latent of least
  normalised variance in a batch of 64 with one factor fixed" to that factor; accuracy on 5,000
  evaluation votes after 10,000 training votes, the scale from 10,000 points.
- DCI (Eastwood & Williams 2018): the feature importances of one gradient-boosted classifier
  per factor (scikit-learn's defaults) on 10,000 points; disentanglement and completeness are
  one minus the importance-weighted entropies; informativeness is the classifiers' mean
  accuracy, on their 10,000 training points and on 5,000 test points.
- SAP (Kumar et al. 2018): per latent and factor the test accuracy of a linear SVM predicting
  the (discrete) factor from that latent alone (or, for continuous factors, the squared
  correlation); the gap between the top two latents, averaged over factors.

A representation is a callable ``represent(observations [n, C, H, W]) -> [n, L]``, for a VAE
the posterior means (``posterior_means``). Data come from a ``GroundTruth``
(``vaelab.data.factors``). Factors that take a single value (dSprites' colour) carry no
information and are left out of every score, as disentanglement_lib leaves them out of its
data sets. Everything random is drawn from a ``torch.Generator`` (and scikit-learn's
``random_state``), so a seed gives the same numbers every time.

Where disentanglement_lib is ambiguous or breaks, this module says what it does: FactorVAE
reports the number of active dimensions (not the length of the mask), maps the arg-min over
active dimensions back to the dimension's own index, and scores 0 when no dimension is active
(disentanglement_lib's definition); DCI with a single factor or latent, where the entropy's
base would be 1, counts that side as perfectly disentangled/complete."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from vaelab.data.factors import GroundTruth
from vaelab.errors import UserError
from vaelab.progress import Phases

if TYPE_CHECKING:
    import lightning as L

    from vaelab.models.vae import VAE

NUM_BINS = 20  # disentanglement_lib's histogram_discretizer for MIG
PRUNE_THRESHOLD = 0.05  # FactorVAE: a dimension whose standard deviation is below this is collapsed
VOTE_BATCH_SIZE = 64  # FactorVAE: points per vote, one factor fixed
REPRESENT_BATCH_SIZE = 1024  # observations made and represented at once

Represent = Callable[[Tensor], Tensor]


# -- sampling ------------------------------------------------------------------------------------


def varying_factors(ground_truth: GroundTruth) -> list[int]:
    """Indices of the factors that take more than one value: the ones the metrics score."""
    sizes = list(ground_truth.factor_sizes)
    if len(sizes) != len(ground_truth.factor_names):
        raise UserError(f"the ground truth names {len(ground_truth.factor_names)} factors but gives {len(sizes)} sizes")
    varying = [j for j, size in enumerate(sizes) if size > 1]
    if not varying:
        raise UserError(f"no factor of the ground truth varies (sizes {sizes}); there is nothing to disentangle")
    return varying


def represent_factors(
    ground_truth: GroundTruth, represent: Represent, factors: Tensor, batch_size: int = REPRESENT_BATCH_SIZE
) -> Tensor:
    """The representation [n, L] (float64, on the CPU) of the observations of ``factors`` [n, F],
    made and represented ``batch_size`` at a time."""
    codes = []
    for chunk in factors.split(batch_size):
        z = represent(ground_truth.observations(chunk))
        if z.dim() != 2 or len(z) != len(chunk):
            raise UserError(
                f"a representation must be [n, latents]; for {len(chunk)} observations it gave {list(z.shape)}"
            )
        codes.append(z.detach().to("cpu", torch.float64))
    codes = torch.cat(codes)
    if not torch.isfinite(codes).all():
        raise UserError("the representation has NaN or infinite values; the model cannot be scored")
    return codes


def sample_all_factors(
    ground_truth: GroundTruth,
    represent: Represent,
    num_points: int,
    generator: torch.Generator,
    batch_size: int = REPRESENT_BATCH_SIZE,
) -> tuple[Tensor, Tensor]:
    """``num_points`` random points: their representation [n, L] and every factor [n, F]."""
    factors = ground_truth.sample_factors(num_points, generator)
    return represent_factors(ground_truth, represent, factors, batch_size), factors


def sample_codes(
    ground_truth: GroundTruth,
    represent: Represent,
    num_points: int,
    generator: torch.Generator,
    batch_size: int = REPRESENT_BATCH_SIZE,
) -> tuple[Tensor, Tensor]:
    """``num_points`` random points: their representation [n, L] (float64) and the factors
    that vary [n, F'] (int64), the pairs the MIG, DCI and SAP scores are computed from."""
    codes, factors = sample_all_factors(ground_truth, represent, num_points, generator, batch_size)
    return codes, factors[:, varying_factors(ground_truth)]


def check_codes(codes: Tensor, factors: Tensor, metric: str) -> None:
    if codes.dim() != 2 or factors.dim() != 2 or len(codes) != len(factors):
        raise UserError(
            f"{metric} needs codes [n, L] and factors [n, F], got {list(codes.shape)} and {list(factors.shape)}"
        )
    if codes.shape[1] < 2:
        raise UserError(f"{metric} compares the two best latents of each factor; this representation has only one")


def seed_for_sklearn(generator: torch.Generator) -> int:
    return int(torch.randint(2**31 - 1, (1,), generator=generator))


# -- mutual information and MIG ------------------------------------------------------------------


def discretize(codes: Tensor, num_bins: int = NUM_BINS) -> Tensor:
    """Each column of ``codes`` [n, L] cut into ``num_bins`` equal-width bins between its
    minimum and maximum (the maximum in the last bin; a constant column in one bin), as
    numpy's histogram edges and digitize cut them: bin indices [n, L] in 0..num_bins-1."""
    x = codes.detach().cpu().double().numpy()
    bins = np.empty(x.shape, dtype=np.int64)
    for i in range(x.shape[1]):
        edges = np.histogram_bin_edges(x[:, i], num_bins)
        bins[:, i] = np.searchsorted(edges[1:-1], x[:, i], side="right")
    return torch.from_numpy(bins)


def _labels(values: np.ndarray) -> tuple[np.ndarray, int]:
    labels = np.unique(values, return_inverse=True)[1].reshape(-1)
    return labels, int(labels.max()) + 1 if len(labels) else 0


def discrete_mutual_information(a: Tensor, b: Tensor) -> float:
    """I(a; b) in nats of two discrete variables from their joint sample (the plug-in estimate,
    as sklearn.metrics.mutual_info_score)."""
    a, na = _labels(np.asarray(a))
    b, nb = _labels(np.asarray(b))
    n = len(a)
    counts = np.bincount(a * nb + b, minlength=na * nb).reshape(na, nb).astype(np.float64)
    # sum_ab p(a, b) log(p(a, b) / (p(a) p(b))) from counts: exactly 0 when a or b is constant
    outer = counts.sum(1, keepdims=True) * counts.sum(0, keepdims=True)
    nonzero = counts > 0
    terms = counts[nonzero] / n * (np.log(counts[nonzero] * n) - np.log(outer[nonzero]))
    return max(0.0, float(terms.sum()))


def discrete_entropy(labels: Tensor) -> float:
    """H in nats of a discrete variable from its sample."""
    return discrete_mutual_information(labels, labels)


def mutual_information_matrix(codes: Tensor, factors: Tensor, num_bins: int = NUM_BINS) -> Tensor:
    """I(z_i; v_j) in nats [L, F] between each discretised latent (``discretize``) and each factor."""
    bins = discretize(codes, num_bins)
    return torch.tensor(
        [
            [discrete_mutual_information(bins[:, i], factors[:, j]) for j in range(factors.shape[1])]
            for i in range(bins.shape[1])
        ],
        dtype=torch.float64,
    )


@dataclass(frozen=True)
class MIG:
    score: float  # mean over factors of per_factor
    per_factor: Tensor  # [F] (I(z_best; v) - I(z_second; v)) / H(v)
    mutual_information: Tensor  # [L, F] nats
    entropy: Tensor  # [F] nats


def mig_from_codes(codes: Tensor, factors: Tensor, num_bins: int = NUM_BINS) -> MIG:
    """The mutual information gap of ``codes`` [n, L] with ``factors`` [n, F]."""
    check_codes(codes, factors, "MIG")
    mi = mutual_information_matrix(codes, factors, num_bins)
    entropy = torch.tensor([discrete_entropy(factors[:, j]) for j in range(factors.shape[1])], dtype=torch.float64)
    if (entropy == 0).any():
        raise UserError("MIG needs every factor to vary in the sample; one takes a single value")
    top = mi.sort(0, descending=True).values
    per_factor = (top[0] - top[1]) / entropy
    return MIG(per_factor.mean().item(), per_factor, mi, entropy)


def mig(
    ground_truth: GroundTruth,
    represent: Represent,
    generator: torch.Generator,
    num_points: int = 10_000,
    num_bins: int = NUM_BINS,
    batch_size: int = REPRESENT_BATCH_SIZE,
) -> MIG:
    codes, factors = sample_codes(ground_truth, represent, num_points, generator, batch_size)
    return mig_from_codes(codes, factors, num_bins)


def mutual_information(
    ground_truth: GroundTruth,
    represent: Represent,
    generator: torch.Generator,
    num_points: int = 10_000,
    num_bins: int = NUM_BINS,
    batch_size: int = REPRESENT_BATCH_SIZE,
) -> Tensor:
    """I(z_i; v_j) in nats [L, F] of each discretised latent with every factor of the ground
    truth (columns in the order of ``factor_names``; a constant factor's column is 0). With a
    generator seeded as ``disentanglement_metrics``'s, the points are those MIG was scored on.
    ``.argmax(1)`` names the factor each latent tells most about."""
    codes, factors = sample_all_factors(ground_truth, represent, num_points, generator, batch_size)
    return mutual_information_matrix(codes, factors, num_bins)


# -- FactorVAE score -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FactorVAEScore:
    eval_accuracy: float  # the score
    train_accuracy: float
    num_active_dims: int
    votes: Tensor  # [F, L] training votes: how often a batch with factor j fixed picked dimension d
    classifier: Tensor  # [L] the factor each dimension votes for; -1 for a pruned dimension


def _votes(
    ground_truth: GroundTruth,
    represent: Represent,
    generator: torch.Generator,
    num_votes: int,
    scale: Tensor,
    active: Tensor,
    vote_batch_size: int,
    batch_size: int,
    step: Callable[[int], None] = lambda n: None,
) -> Tensor:
    """[F', L] counts of (fixed factor, dimension of least normalised variance) over ``num_votes``
    batches of ``vote_batch_size`` points, each with one varying factor fixed to a random value
    and the others random. The arg-min runs over the active dimensions only and is mapped back
    to the dimension's index in the full representation."""
    varying = torch.tensor(varying_factors(ground_truth))
    active_dims = active.nonzero().squeeze(1)
    votes = torch.zeros(len(varying), len(scale), dtype=torch.int64)
    per_chunk = max(1, batch_size // vote_batch_size)
    done = 0
    while done < num_votes:
        m = min(per_chunk, num_votes - done)
        fixed = torch.randint(len(varying), (m,), generator=generator)  # index among the varying factors
        factors = ground_truth.sample_factors(m * vote_batch_size, generator).view(m, vote_batch_size, -1)
        rows, columns = torch.arange(m), varying[fixed]
        factors[rows, :, columns] = factors[rows, 0, columns][:, None].expand(m, vote_batch_size)
        codes = represent_factors(ground_truth, represent, factors.flatten(0, 1), m * vote_batch_size)
        normalised = codes.view(m, vote_batch_size, -1)[:, :, active_dims] / scale[active_dims]
        dims = active_dims[normalised.var(1, correction=1).argmin(1)]
        votes.index_put_((fixed, dims), torch.ones(m, dtype=torch.int64), accumulate=True)
        done += m
        step(m)
    return votes


def factor_vae(
    ground_truth: GroundTruth,
    represent: Represent,
    generator: torch.Generator,
    num_variance_estimate: int = 10_000,
    num_train: int = 10_000,
    num_eval: int = 5_000,
    vote_batch_size: int = VOTE_BATCH_SIZE,
    prune_threshold: float = PRUNE_THRESHOLD,
    batch_size: int = REPRESENT_BATCH_SIZE,
    step: Callable[[int], None] = lambda n: None,
) -> FactorVAEScore:
    """The FactorVAE disentanglement score. The scale of each dimension is its standard deviation
    over ``num_variance_estimate`` random points; a dimension whose scale is below
    ``prune_threshold`` (disentanglement_lib's ``prune_dims.threshold``, compared with the
    standard deviation, so a variance below 0.0025) has collapsed and never votes. Each vote
    divides the representation of a batch with one factor fixed by the scale and picks the
    dimension of least variance; the classifier maps each dimension to the factor it got most
    training votes for (the first factor for a dimension without votes, as numpy's argmax).
    With no active dimension both accuracies are 0, as disentanglement_lib defines them.
    ``step(n)`` is told of every n votes counted (a progress bar)."""
    codes, _ = sample_all_factors(ground_truth, represent, num_variance_estimate, generator, batch_size)
    scale = codes.var(0, correction=1).sqrt()
    active = (scale >= prune_threshold) & (scale > 0)
    num_factors, num_dims = len(varying_factors(ground_truth)), codes.shape[1]
    if not active.any():
        empty = torch.zeros(num_factors, num_dims, dtype=torch.int64)
        return FactorVAEScore(0.0, 0.0, 0, empty, torch.full((num_dims,), -1))
    args = (scale, active, vote_batch_size, batch_size, step)
    train = _votes(ground_truth, represent, generator, num_train, *args)
    classifier = train.argmax(0)
    dims = torch.arange(num_dims)
    evaluation = _votes(ground_truth, represent, generator, num_eval, *args)
    return FactorVAEScore(
        eval_accuracy=(evaluation[classifier, dims].sum() / evaluation.sum()).item(),
        train_accuracy=(train[classifier, dims].sum() / train.sum()).item(),
        num_active_dims=int(active.sum()),
        votes=train,
        classifier=torch.where(active, classifier, -1),
    )


# -- DCI -----------------------------------------------------------------------------------------


def _one_minus_entropy(rows: np.ndarray) -> np.ndarray:
    """1 - H(p) / log(size) of each row of nonnegative weights, normalised to a distribution
    (with disentanglement_lib's 1e-11 added to every weight); 1 when the row has one entry."""
    size = rows.shape[1]
    if size == 1:
        return np.ones(len(rows))
    p = rows + 1e-11
    p = p / p.sum(1, keepdims=True)
    return 1.0 - (-(p * np.log(p)).sum(1)) / np.log(size)


def _weighted(per_row: np.ndarray, weights: np.ndarray) -> float:
    total = weights.sum()
    weights = weights / total if total > 0 else np.full(len(weights), 1.0 / len(weights))
    return float((per_row * weights).sum())


def dci_disentanglement(importance: Tensor) -> float:
    """sum_i rho_i (1 - H_F(P_i.)) for an importance matrix [L, F]: how much each latent is
    about one factor only, weighted by the latent's share of the total importance."""
    m = np.abs(np.asarray(importance, dtype=np.float64))
    return _weighted(_one_minus_entropy(m), m.sum(1))


def dci_completeness(importance: Tensor) -> float:
    """sum_j rho_j (1 - H_L(P_.j)) for an importance matrix [L, F]: how much each factor is
    captured by one latent only, weighted by the factor's share of the total importance."""
    m = np.abs(np.asarray(importance, dtype=np.float64)).T
    return _weighted(_one_minus_entropy(m), m.sum(1))


@dataclass(frozen=True)
class DCI:
    disentanglement: float
    completeness: float
    informativeness_train: float  # mean over factors of the classifier's accuracy on its training points
    informativeness_test: float  # ... and on the test points
    importance: Tensor  # [L, F]


DCI_STAGES = 100  # GradientBoostingClassifier's n_estimators (its default, as disentanglement_lib)


def dci_from_codes(
    codes_train: Tensor,
    factors_train: Tensor,
    codes_test: Tensor,
    factors_test: Tensor,
    random_state: int = 0,
    step: Callable[[int], None] = lambda n: None,
) -> DCI:
    """DCI from one scikit-learn ``GradientBoostingClassifier`` (its defaults) per factor;
    ``step(1)`` after each boosting stage, ``DCI_STAGES`` a factor (a progress bar)."""
    from sklearn.ensemble import GradientBoostingClassifier

    x_train, x_test = codes_train.double().numpy(), codes_test.double().numpy()
    y_train, y_test = factors_train.numpy(), factors_test.numpy()
    importance = np.zeros((x_train.shape[1], y_train.shape[1]))
    train_accuracy, test_accuracy = [], []
    for j in range(y_train.shape[1]):

        def stage_done(*_: object) -> bool:
            step(1)
            return False  # go on: the monitor only counts

        model = GradientBoostingClassifier(random_state=random_state).fit(x_train, y_train[:, j], monitor=stage_done)
        importance[:, j] = np.abs(model.feature_importances_)
        train_accuracy.append(np.mean(model.predict(x_train) == y_train[:, j]))
        test_accuracy.append(np.mean(model.predict(x_test) == y_test[:, j]))
    return DCI(
        disentanglement=dci_disentanglement(importance),
        completeness=dci_completeness(importance),
        informativeness_train=float(np.mean(train_accuracy)),
        informativeness_test=float(np.mean(test_accuracy)),
        importance=torch.from_numpy(importance),
    )


def dci(
    ground_truth: GroundTruth,
    represent: Represent,
    generator: torch.Generator,
    num_train: int = 10_000,
    num_test: int = 5_000,
    batch_size: int = REPRESENT_BATCH_SIZE,
) -> DCI:
    train = sample_codes(ground_truth, represent, num_train, generator, batch_size)
    test = sample_codes(ground_truth, represent, num_test, generator, batch_size)
    return dci_from_codes(*train, *test, random_state=seed_for_sklearn(generator))


# -- SAP -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SAP:
    score: float
    score_matrix: Tensor  # [L, F] accuracy (discrete factors) or R^2 (continuous) of each latent alone


def sap_from_codes(
    codes_train: Tensor,
    factors_train: Tensor,
    codes_test: Tensor,
    factors_test: Tensor,
    continuous: bool = False,
    random_state: int = 0,
    step: Callable[[int], None] = lambda n: None,
) -> SAP:
    """The SAP score. Discrete factors (disentanglement_lib's studies): the test accuracy of a
    ``LinearSVC(C=0.01, class_weight="balanced")`` trained on the one latent. Continuous: the
    squared correlation of latent and factor on the training points (0 for a constant latent).
    ``step(1)`` after each latent (a progress bar)."""
    check_codes(codes_train, factors_train, "SAP")
    x_train, x_test = codes_train.double().numpy(), codes_test.double().numpy()
    y_train, y_test = factors_train.numpy(), factors_test.numpy()
    num_codes, num_factors = x_train.shape[1], y_train.shape[1]
    matrix = np.zeros((num_codes, num_factors))
    if continuous:
        for i in range(num_codes):
            for j in range(num_factors):
                cov = np.cov(x_train[:, i], y_train[:, j], ddof=1)
                matrix[i, j] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
            step(1)
    else:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for i in range(num_codes):
                for j in range(num_factors):
                    svm = LinearSVC(C=0.01, class_weight="balanced", random_state=random_state)
                    svm.fit(x_train[:, i : i + 1], y_train[:, j])
                    matrix[i, j] = np.mean(svm.predict(x_test[:, i : i + 1]) == y_test[:, j])
                step(1)
    top = np.sort(matrix, axis=0)
    return SAP(float(np.mean(top[-1] - top[-2])), torch.from_numpy(matrix))


def sap(
    ground_truth: GroundTruth,
    represent: Represent,
    generator: torch.Generator,
    num_train: int = 10_000,
    num_test: int = 5_000,
    continuous: bool = False,
    batch_size: int = REPRESENT_BATCH_SIZE,
) -> SAP:
    train = sample_codes(ground_truth, represent, num_train, generator, batch_size)
    test = sample_codes(ground_truth, represent, num_test, generator, batch_size)
    return sap_from_codes(*train, *test, continuous=continuous, random_state=seed_for_sklearn(generator))


# -- all of them ---------------------------------------------------------------------------------


def disentanglement_metrics(
    ground_truth: GroundTruth,
    represent: Represent,
    seed: int = 0,
    num_train: int = 10_000,
    num_test: int = 5_000,
    num_variance_estimate: int = 10_000,
    num_votes_train: int = 10_000,
    num_votes_eval: int = 5_000,
    vote_batch_size: int = VOTE_BATCH_SIZE,
    num_bins: int = NUM_BINS,
    batch_size: int = REPRESENT_BATCH_SIZE,
    dci_points: int | None = None,
    phases: Phases | None = None,
) -> dict[str, float]:
    """Every score, reproducible for a ``seed``. MIG, DCI and SAP share one sample of
    ``num_train`` training and ``num_test`` test points (disentanglement_lib, seeding each
    metric alike, draws the same points for each); FactorVAE draws its own from the same seed.
    ``dci_points``: DCI's trees learn from the first ``dci_points`` training points and are
    tested on the first ``dci_points // 2`` test points (None: all). The trees cost most of the
    time. ``phases`` (``vaelab.progress``) shows each score's progress and keeps its time.

    Keys: mig, factor_vae (evaluation accuracy), factor_vae_train, factor_vae_active_dims,
    dci_disentanglement, dci_completeness, dci_informativeness_train, dci_informativeness_test
    (classification accuracies, as disentanglement_lib's informativeness), sap."""
    phases = phases or Phases(enabled=False)
    generator = torch.Generator().manual_seed(seed)
    with phases("disentanglement: encoding the points"):
        train = sample_codes(ground_truth, represent, num_train, generator, batch_size)
        test = sample_codes(ground_truth, represent, num_test, generator, batch_size)
    with phases("MIG"):
        mig_result = mig_from_codes(*train, num_bins=num_bins)
    if dci_points is not None:
        train_dci, test_dci = [t[:dci_points] for t in train], [t[: max(1, dci_points // 2)] for t in test]
    else:
        train_dci, test_dci = train, test
    with phases("DCI (boosted trees per factor)", total=train[1].shape[1] * DCI_STAGES, unit="stage") as step:
        dci_result = dci_from_codes(*train_dci, *test_dci, random_state=seed, step=step)
    with phases("SAP (a linear SVM per latent and factor)", total=train[0].shape[1], unit="latent") as step:
        sap_result = sap_from_codes(*train, *test, random_state=seed, step=step)
    with phases("FactorVAE (votes)", total=num_votes_train + num_votes_eval, unit="vote") as step:
        factor_vae_result = factor_vae(
            ground_truth,
            represent,
            torch.Generator().manual_seed(seed),
            num_variance_estimate=num_variance_estimate,
            num_train=num_votes_train,
            num_eval=num_votes_eval,
            vote_batch_size=vote_batch_size,
            batch_size=batch_size,
            step=step,
        )
    return {
        "mig": mig_result.score,
        "factor_vae": factor_vae_result.eval_accuracy,
        "factor_vae_train": factor_vae_result.train_accuracy,
        "factor_vae_active_dims": factor_vae_result.num_active_dims,
        "dci_disentanglement": dci_result.disentanglement,
        "dci_completeness": dci_result.completeness,
        "dci_informativeness_train": dci_result.informativeness_train,
        "dci_informativeness_test": dci_result.informativeness_test,
        "sap": sap_result.score,
    }


def dequantize_levels(datamodule: L.LightningDataModule) -> int | None:
    """The data's top pixel value when the model sees dequantized pixels (a continuous
    likelihood), else None; see ``posterior_means``."""
    if not getattr(datamodule, "dequantize", False):
        return None
    return int(datamodule.splits["train"].levels) if getattr(datamodule, "splits", None) else 1


def posterior_means(model: VAE, batch_size: int = 256, dequantize_levels: int | None = None) -> Represent:
    """A model's representation: the means of q(z|x) (``model.posterior(x).mu``), computed in
    batches on the model's device with the model in eval mode, returned on the CPU.
    ``dequantize_levels``: a model with a continuous likelihood trained on dequantized pixels
    (x + u) / (levels + 1), u ~ U[0, 1); it is shown the observations x in [0, 1] (x * levels the
    integers) at the middle of their interval, (x * levels + 1/2) / (levels + 1), what it saw."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def represent(observations: Tensor) -> Tensor:
        model.eval()
        if dequantize_levels is not None:
            observations = (observations * dequantize_levels + 0.5) / (dequantize_levels + 1)
        # Of a two-layer model, z1: its z2 means are a function of z1's, which would count twice.
        first = model.latent_layers()[0]
        return torch.cat(
            [model.posterior(x.to(device)).mu[..., :first].float().cpu() for x in observations.split(batch_size)]
        )

    return represent
