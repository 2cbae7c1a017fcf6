from vaelab.models.beta_tcvae import BetaTCVAE
from vaelab.models.beta_vae import BetaVAE
from vaelab.models.cvae import CVAE
from vaelab.models.dip_vae import DIPVAE
from vaelab.models.factor_vae import FactorVAE
from vaelab.models.iwae import IWAE
from vaelab.models.mmd_vae import MMDVAE
from vaelab.models.prior import CodePrior
from vaelab.models.vae import VAE
from vaelab.models.vqvae import VQVAE

__all__ = ["CVAE", "DIPVAE", "IWAE", "MMDVAE", "VAE", "VQVAE", "BetaTCVAE", "BetaVAE", "CodePrior", "FactorVAE"]
