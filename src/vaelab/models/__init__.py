from vaelab.models.beta_vae import BetaVAE
from vaelab.models.iwae import IWAE
from vaelab.models.vae import VAE

__all__ = ["VAE", "BetaVAE", "IWAE"]
