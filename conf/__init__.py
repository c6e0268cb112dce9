"""The Hydra configs of ami-lightning, installed as the package ``ami_lightning.conf`` (``pkg://ami_lightning.conf``)."""
