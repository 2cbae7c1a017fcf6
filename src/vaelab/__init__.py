"""vaelab: variational autoencoders on Lightning and Hydra.

From Python, ``vaelab.train(overrides)`` trains as ``python train.py`` does and ``vaelab.load(path)``
returns a trained model with its data (``vaelab.api``). They are imported on first use, so that
``import vaelab.<module>`` stays light."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["load", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from vaelab import api

        return getattr(api, name)
    raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
