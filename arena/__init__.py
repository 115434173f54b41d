"""arena: the shared adversarial core (config, data, divergences, prior matching, trainer)."""
from .version import __version__

__all__ = ["__version__"]
