"""`python train.py [overrides]`: train a VAE. See README.md and conf/train.yaml."""

from vaelab.training import main

if __name__ == "__main__":
    main()
