"""Schedules of the KL weight and of the learning rate, as functions of the training step.

A KL schedule is called with the global step and returns ``(beta, capacity)``: the loss is
``recon + beta * KL`` when ``capacity`` is None, else ``recon + beta * |KL - capacity|``
(Burgess et al. 2018, where beta plays the role of their gamma).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


class ConstantBeta:
    """beta(t) = beta."""

    def __init__(self, beta: float = 1.0):
        self.beta = beta

    def __call__(self, step: int) -> tuple[float, float | None]:
        return self.beta, None


class LinearWarmup:
    """beta(t) = beta * min(1, t / warmup_steps): the KL term is switched on gradually
    (Bowman et al. 2016; Sønderby et al. 2016)."""

    def __init__(self, beta: float = 1.0, warmup_steps: int = 10_000):
        self.beta, self.warmup_steps = beta, warmup_steps

    def __call__(self, step: int) -> tuple[float, float | None]:
        return self.beta * min(1.0, step / self.warmup_steps), None


class CyclicalAnnealing:
    """Fu et al. 2019: ``total_steps`` split into ``cycles`` cycles; within each, beta rises
    linearly from 0 to ``beta`` over the first ``ratio`` of the cycle, then stays there."""

    def __init__(self, beta: float = 1.0, total_steps: int = 10_000, cycles: int = 4, ratio: float = 0.5):
        self.beta, self.total_steps, self.cycles, self.ratio = beta, total_steps, cycles, ratio

    def __call__(self, step: int) -> tuple[float, float | None]:
        period = self.total_steps / self.cycles
        phase = (step % period) / period  # position within the current cycle, in [0, 1)
        return self.beta * min(1.0, phase / self.ratio), None


class CapacityControl:
    """Burgess et al. 2018: loss = recon + gamma * |KL - C|, with C rising linearly from 0 to
    ``c_max`` nats over ``steps``."""

    def __init__(self, gamma: float = 1000.0, c_max: float = 25.0, steps: int = 100_000):
        self.gamma, self.c_max, self.steps = gamma, c_max, steps

    def __call__(self, step: int) -> tuple[float, float | None]:
        return self.gamma, self.c_max * min(1.0, step / self.steps)


KL_SCHEDULES = {
    "constant": ConstantBeta,
    "linear": LinearWarmup,
    "cyclical": CyclicalAnnealing,
    "capacity": CapacityControl,
}


def build_kl_schedule(spec: dict, beta: float, steps_per_epoch: int = 1) -> Callable[[int], tuple[float, float | None]]:
    """From config {name, ...}. A length may be given in epochs (``warmup_epochs``,
    ``total_epochs``, ``epochs``); it is turned into steps unless the steps are given."""
    spec = dict(spec)
    name = spec.pop("name")
    for key in [k for k in spec if k == "epochs" or k.endswith("_epochs")]:
        epochs = spec.pop(key)
        steps_key = key[: -len("epochs")] + "steps"
        if spec.get(steps_key) is None and epochs is not None:
            spec[steps_key] = max(1, int(epochs * steps_per_epoch))
    spec = {k: v for k, v in spec.items() if v is not None}
    if name == "capacity":
        return CapacityControl(**spec)
    return KL_SCHEDULES[name](beta=beta, **spec)


class IWAEPaperLR:
    """The learning-rate factor of the IWAE paper (Burda et al. 2016, sec. 5): for i = 0 .. stages-1,
    3^i passes over the data at lr * 10^(-i/7). ``stages=8`` is the paper's 3280 passes; fewer
    stages give a shorter run with the same shape (stages=4: 40 passes). For LambdaLR per epoch."""

    def __init__(self, stages: int = 8):
        self.stages = stages

    def __call__(self, epoch: int) -> float:
        i, boundary = 0, 1
        while epoch >= boundary and i < self.stages - 1:
            i += 1
            boundary += 3**i
        return 10 ** (-i / 7)

    @property
    def total_epochs(self) -> int:
        return sum(3**i for i in range(self.stages))
