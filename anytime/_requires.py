"""One-line errors for the parts of anytime that need the ``train`` extra."""

from __future__ import annotations

import importlib


def require_train_extra(module: str, *packages: str) -> None:
  """Raises a one-line ``ImportError`` naming the install command when one of ``packages``
  (import names, e.g. ``"flax"``, ``"orbax.checkpoint"``) is missing; call it at the top of a
  module that needs the trainer's dependencies: ``require_train_extra(__name__, "flax", ...)``."""
  missing = []
  for package in packages:
    try:
      importlib.import_module(package)
    except ImportError:
      missing.append(package)
  if missing:
    raise ImportError(f"{module} needs {', '.join(missing)}, which the lean install lacks: "
                      f'pip install "jax-anytime[train]"') from None
