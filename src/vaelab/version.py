"""vaelab's version, written into every checkpoint (a checkpoint of another major version is not resumed)."""

__version__ = "0.1.0"
