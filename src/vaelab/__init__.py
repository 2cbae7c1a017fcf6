"""vaelab: variational autoencoders on Lightning and Hydra.

From Python, ``vaelab.train(overrides)`` trains as ``python train.py`` does and ``vaelab.load(path)``
returns a trained model with its data (``vaelab.api``). They are imported on first use, so that
``import vaelab.<module>`` stays light."""

from __future__ import annotations

from typing import Any

from vaelab.version import __version__

__all__ = ["__version__", "load", "train"]


def __getattr__(name: str) -> Any:
    if name in ("load", "train"):
        from vaelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
