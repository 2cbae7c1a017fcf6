from vaelab.models.vae import VAE

__all__ = ["VAE"]
