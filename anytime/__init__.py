"""anytime: horizon-free learning-rate schedules and weight averaging for JAX.

The library layer (``anytime.schedules``, ``anytime.averaging``) depends on jax + optax only.
"""

from anytime import schedules

__all__ = ["schedules"]
__version__ = "0.1.0"
