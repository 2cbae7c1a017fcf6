"""vaelab's Hydra configs. An installed vaelab carries this folder as the package ``vaelab.conf``
(see pyproject.toml), so Hydra can also name it ``pkg://vaelab.conf``."""
