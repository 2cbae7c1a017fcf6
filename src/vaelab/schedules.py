"""Schedules of the KL weight and of the learning rate, as functions of the training step.

A KL schedule is called with the global step and returns ``(beta, capacity)``: the loss is
``recon + beta * KL`` when ``capacity`` is None, else ``recon + beta * |KL - capacity|``
(Burgess et al. 2018, where beta plays the role of their gamma).

Each schedule declares its settings in ``Settings`` (the ``kl_schedule`` group's keys); a length
in steps may also be given in epochs (``warmup_epochs`` for ``warmup_steps``), and ``beta`` is
``model.beta``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from omegaconf import OmegaConf

from vaelab.checks import require, set_by_user
from vaelab.settings import Settings, not_an_option_setting, setting, validate

if TYPE_CHECKING:
    from collections.abc import Callable

    from omegaconf import DictConfig

POSITIVE = "> 0"  # a length: steps (whole) or epochs (may be fractional)


class ConstantBeta:
    """beta(t) = beta."""

    class Settings(Settings):
        name: Literal["constant"] = setting("constant", "the schedule")

    def __init__(self, beta: float = 1.0):
        self.beta = beta

    def __call__(self, step: int) -> tuple[float, float | None]:
        return self.beta, None


class LinearWarmup:
    """beta(t) = beta * min(1, t / warmup_steps): the KL term is switched on gradually
    (Bowman et al. 2016; Sønderby et al. 2016)."""

    class Settings(Settings):
        name: Literal["linear"] = setting("linear", "the schedule")
        warmup_steps: int | None = setting(None, "optimizer steps to reach model.beta", gt=0, says=POSITIVE)
        warmup_epochs: float | None = setting(10, "the same in epochs (if warmup_steps is null)", gt=0, says=POSITIVE)

    def __init__(self, beta: float, warmup_steps: int):
        self.beta, self.warmup_steps = beta, warmup_steps

    def __call__(self, step: int) -> tuple[float, float | None]:
        return self.beta * min(1.0, step / self.warmup_steps), None


class CyclicalAnnealing:
    """Fu et al. 2019: ``total_steps`` split into ``cycles`` cycles; within each, beta rises
    linearly from 0 to ``beta`` over the first ``ratio`` of the cycle, then stays there."""

    class Settings(Settings):
        name: Literal["cyclical"] = setting("cyclical", "the schedule")
        total_steps: int | None = setting(None, "the run's optimizer steps", gt=0, says=POSITIVE)
        total_epochs: float | None = setting(None, "the same in epochs (if total_steps is null)", gt=0, says=POSITIVE)
        cycles: int = setting(4, "cycles in the run", gt=0, says=POSITIVE)
        ratio: float = setting(0.5, "the part of each cycle over which beta rises", gt=0, le=1)

    def __init__(
        self,
        beta: float,
        total_steps: int,
        cycles: int = Settings.default("cycles"),
        ratio: float = Settings.default("ratio"),
    ):
        self.beta, self.total_steps, self.cycles, self.ratio = beta, total_steps, cycles, ratio

    def __call__(self, step: int) -> tuple[float, float | None]:
        period = self.total_steps / self.cycles
        phase = (step % period) / period  # position within the current cycle, in [0, 1)
        return self.beta * min(1.0, phase / self.ratio), None


class CapacityControl:
    """Burgess et al. 2018: loss = recon + gamma * |KL - C|, with C rising linearly from 0 to
    ``c_max`` nats over ``steps``."""

    class Settings(Settings):
        name: Literal["capacity"] = setting("capacity", "the schedule")
        gamma: float = setting(1000.0, "the weight of |KL - C| (model.beta is not used)", ge=0)
        c_max: float = setting(25.0, "the capacity C reached at the end, nats", ge=0, unit=" nats")
        steps: int | None = setting(None, "optimizer steps over which C rises", gt=0, says=POSITIVE)
        epochs: float | None = setting(None, "the same in epochs (if steps is null)", gt=0, says=POSITIVE)

    def __init__(self, steps: int, gamma: float = Settings.default("gamma"), c_max: float = Settings.default("c_max")):
        self.gamma, self.c_max, self.steps = gamma, c_max, steps

    def __call__(self, step: int) -> tuple[float, float | None]:
        return self.gamma, self.c_max * min(1.0, step / self.steps)


KL_SCHEDULES = {
    "constant": ConstantBeta,
    "linear": LinearWarmup,
    "cyclical": CyclicalAnnealing,
    "capacity": CapacityControl,
}


def check_kl_schedule(spec: Any, cfg: DictConfig | None = None) -> Settings:
    """The ``kl_schedule`` node against its schedule's schema; a length given in both steps and
    epochs, or in neither. ``cfg``: the whole run config, to tell the values a user set from the
    config files' own."""
    names = list(KL_SCHEDULES)
    name = spec.get("name")
    require(
        name in KL_SCHEDULES,
        f"kl_schedule.name must be one of {', '.join(names)}, got {name!r}; choose kl_schedule=<name>",
    )
    schema = KL_SCHEDULES[name].Settings
    takes = [key for key in schema.model_fields if key != "name"]

    def unknown(key: str) -> str:
        return not_an_option_setting(f"kl_schedule.{key}", f"kl_schedule={name}", takes)

    # A length in epochs that follows trainer.max_epochs: not read when the steps are given.
    followed = [k for k in takes if k.endswith("epochs") and k in spec and OmegaConf.is_interpolation(spec, k)]
    unread = tuple(k for k in followed if spec.get(k[: -len("epochs")] + "steps") is not None)
    for key in set(followed) - set(unread):
        value, steps = spec[key], key[: -len("epochs")] + "steps"
        require(
            value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0),
            f"kl_schedule.{key} must be > 0, got {value!r} (it follows trainer.max_epochs); "
            f"set kl_schedule.{steps}=<N> or kl_schedule.{key}=<N>",
        )
    settings = validate(schema, spec, "kl_schedule", unknown, skip=unread)
    for key in (k for k in takes if k.endswith("epochs")):
        steps = key[: -len("epochs")] + "steps"
        if getattr(settings, steps) is not None:
            require(
                getattr(settings, key) is None
                or cfg is None
                or not set_by_user(cfg, f"kl_schedule.{key}", like=("name",)),
                f"kl_schedule.{key} has no effect when kl_schedule.{steps} is set; "
                f"give one of them (kl_schedule.{key}=null)",
            )
        else:
            require(
                getattr(settings, key) is not None,
                f"kl_schedule={name} needs its length: set kl_schedule.{steps}=<N> or kl_schedule.{key}=<N>",
            )
    return settings


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
