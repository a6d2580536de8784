"""The project's naming rules in one place: run, branch and average names, metric keys, and the
cooldown length of a decay branch. Every layer that needs one of these calls it from here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from anytime import schedules

EVAL_PREFIX = "eval_loss/"


def eval_key(candidate: str) -> str:
  """The metrics key of one evaluated candidate (``raw``, an average's name, ...)."""
  return EVAL_PREFIX + candidate


def is_eval_record(record: Mapping[str, Any]) -> bool:
  """Whether a metrics record holds evaluations (rather than training-loss logs)."""
  return any(key.startswith(EVAL_PREFIX) for key in record)


def eval_losses(record: Mapping[str, Any]) -> dict[str, float]:
  """``{candidate: loss}`` of one metrics record."""
  return {key[len(EVAL_PREFIX):]: value for key, value in record.items()
          if key.startswith(EVAL_PREFIX)}


def cooldown_steps(fraction: float, horizon: int) -> int:
  """The cooldown length of a decay branch that ends at ``horizon`` (``schedules``' rule)."""
  return schedules.cooldown_length(fraction, horizon)


def branch_name(shape: str, end_step: int) -> str:
  """The directory name of a decay branch: its cooldown shape and the step it ends at."""
  return f"{shape}_{end_step}"


def ema_name(factor: float) -> str:
  """The name of an anytime EMA with factor f (``ema_25``, ``ema_6p25``)."""
  return "ema_" + f"{factor:g}".replace(".", "p")


def lr_tag(lr: float) -> str:
  """A tag of a learning rate for run names, exact to 3 digits (``3e-3``, ``4.24e-3``)."""
  mantissa, exponent = f"{lr:.2e}".split("e")
  return f"{float(mantissa):g}e{int(exponent)}"
