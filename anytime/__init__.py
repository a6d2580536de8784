"""anytime: horizon-free learning-rate schedules and weight averaging for JAX.

The library layer (``anytime.schedules``, ``anytime.averaging``) depends on jax + optax only.
"""

from anytime import averaging, schedules

__all__ = ["averaging", "schedules"]
__version__ = "0.1.0"
