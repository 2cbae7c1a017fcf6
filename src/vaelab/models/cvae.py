"""The conditional VAE (Sohn et al. 2015): a VAE of p(x|y) for labels y the data set gives."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from vaelab.checks import require
from vaelab.errors import UserError
from vaelab.models.vae import VAE
from vaelab.nets import build_networks
from vaelab.settings import setting

if TYPE_CHECKING:
    from vaelab.data.in_memory import InMemoryDataModule


def label_sizes_of(labels: Tensor) -> list[int] | None:
    """The number of values of each label column: [C] for class labels [N], one per factor for
    [N, F]; None when the data has no labels (vaelab marks those -1)."""
    if labels.numel() == 0 or bool((labels < 0).any()):
        return None
    columns = labels.reshape(len(labels), -1)
    return [int(v) + 1 for v in columns.amax(0)]


def check_label_sizes(given: list[int], needed: list[int], name: str, fix: str) -> None:
    """Refuses labels needing ``needed`` values per column that the sizes ``given`` do not cover."""
    require(
        len(given) == len(needed) and all(g >= n for g, n in zip(given, needed)),
        f"{name}{given} does not cover the data's labels, which need {needed}; {fix}",
    )


class CVAE(VAE):
    """Conditional VAE (Sohn et al. 2015, "Learning Structured Output Representation using Deep
    Conditional Generative Models", eq. 4 with the prior network replaced by N(0, I), as in Kingma
    et al. 2014's M2 for known labels): q(z|x, y), p(x|z, y) and p(z) = N(0, I), trained on the
    bound of the conditional likelihood

        log p(x|y) >= E_q(z|x,y)[log p(x|z, y)] - KL(q(z|x, y) || p(z)).

    The label enters both networks as c(y), its one-hot code ([B, C] for class labels, the
    concatenated one-hot codes of each column for factor labels [B, F]): the decoder reads
    [z, c(y)], and the encoder's linear head reads its last hidden layer and c(y), which, the head
    being linear, is ``encoder(x) + W c(y)``. Every logged number, the test ELBO and eval.py's NLL
    are those of p(x|y). Samples and reconstructions take labels; ``sample`` without them cycles
    through the values of each label column."""

    conditional = True
    standard_prior_only = "conditions q and p(x|z, y) on the label with p(z) = N(0, I)"

    class Settings(VAE.Settings):
        label_sizes: list[int] | None = setting(
            None, "values of each label column ([10] for digit classes); null: read from the training labels"
        )

    def __init__(
        self,
        *args,
        label_sizes: list[int] | None = Settings.default("label_sizes"),  # noqa: B008 (never mutated)
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if not label_sizes:
            raise UserError("model=cvae needs model.label_sizes (train.py reads them from the data's labels)")
        self.label_sizes = [int(n) for n in label_sizes]
        condition_dim = sum(self.label_sizes)
        hp = self.hparams
        num_params = self.num_posterior_params
        _, self.decoder = build_networks(hp.net, hp.image_shape, hp.latent_dim + condition_dim, num_params)
        self.label_head = nn.Linear(condition_dim, num_params, bias=False)

    @classmethod
    def settle_with_data(cls, model_cfg: DictConfig, datamodule: InMemoryDataModule) -> None:
        """Reads ``label_sizes`` from the labels of every split when it is null, and refuses data
        without labels, or labels beyond the sizes a user gave."""
        found = None
        for name, split in datamodule.splits.items():
            sizes = label_sizes_of(split.labels)
            require(
                sizes is not None,
                f"model=cvae is conditioned on labels, and data={datamodule.name} has none (in its {name} split); "
                "choose labelled data (data=digits, mnist, fashion_mnist, cifar10, synthetic, dsprites, or "
                "data=tensors with labels)",
            )
            found = sizes if found is None else [max(a, b) for a, b in zip(found, sizes)]
        if model_cfg.label_sizes is None:
            model_cfg.label_sizes = found
        fix = "set model.label_sizes=null to read them from the data"
        check_label_sizes(list(model_cfg.label_sizes), found, "model.label_sizes=", fix)

    def condition(self, y: Tensor) -> Tensor:
        """c(y) [B, sum of label_sizes]: the one-hot code of each label column, concatenated."""
        if y is None:
            raise UserError("model=cvae models p(x|y): pass the labels y as well")
        columns = y.reshape(len(y), -1).long()
        codes = [F.one_hot(columns[:, j], n) for j, n in enumerate(self.label_sizes)]
        return torch.cat(codes, -1).to(self.label_head.weight.dtype)

    def encoder_params(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.encoder(x) + self.label_head(self.condition(y))

    def decoder_params(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """z [..., B, L] and the labels of the B images: the decoder reads [z, c(y)]."""
        c = self.condition(y).to(z.dtype)
        return self.decoder(torch.cat([z, c.expand(*z.shape[:-1], c.shape[-1])], -1))

    def cycled_labels(self, n: int) -> Tensor:
        """[n] (or [n, F]) labels that go through the values of each column in turn."""
        steps = torch.arange(n, device=self.device)
        columns = torch.stack([steps % size for size in self.label_sizes], -1)
        return columns[:, 0] if len(self.label_sizes) == 1 else columns

    def varied_column(self) -> int:
        """The label column that pictures vary: the first with more than one value."""
        return next((j for j, n in enumerate(self.label_sizes) if n > 1), 0)

    def varied_size(self) -> int:
        return self.label_sizes[self.varied_column()]

    def with_label(self, y: Tensor, value: int) -> Tensor:
        """Labels ``y`` with the varied column set to ``value``."""
        y = y.clone()
        if y.dim() == 1:
            y[:] = value
        else:
            y[:, self.varied_column()] = value
        return y

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None, y: Tensor | None = None) -> Tensor:
        """E[x|z, y] for z drawn from the prior, for the labels ``y`` (default: ``cycled_labels``)."""
        return super().sample(num_samples, generator, self.cycled_labels(num_samples) if y is None else y)
