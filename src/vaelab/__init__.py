"""vaelab: variational autoencoders on Lightning and Hydra."""

__version__ = "0.1.0"
