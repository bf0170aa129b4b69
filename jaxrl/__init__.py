"""jaxrl: GRPO-vs-SFT post-training studies in JAX/Flax."""

from jaxrl.errors import JaxrlError

__all__ = ["JaxrlError"]
__version__ = "0.1.0"
