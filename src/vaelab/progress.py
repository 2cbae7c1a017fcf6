"""Progress of evaluation's long phases on stderr: a bar with its rate and time left where a phase
has steps to count (tqdm), a line where it has none, and each phase's duration, which the summary
and metrics.json report."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm


def _nothing(n: int = 1) -> None:
    pass


class Phases:
    """``with phases("DCI trees", total=5) as step: ... step()`` shows a bar of 5 steps and records the
    phase's seconds in ``seconds``; ``total=None`` prints the phase's name as it starts; ``quiet``
    shows nothing (a phase with a bar of its own). When not ``enabled`` only the times are kept."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(
        self, name: str, total: int | None = None, unit: str = "step", quiet: bool = False
    ) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        bar = None
        if self.enabled and not quiet:
            if total:
                bar = tqdm(total=total, desc=name, unit=unit, file=sys.stderr, dynamic_ncols=True)
            else:
                print(f"{name} ...", file=sys.stderr, flush=True)
        try:
            yield bar.update if bar is not None else _nothing
        finally:
            if bar is not None:
                bar.close()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
