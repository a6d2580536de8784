"""Input checks shared by the labs: one-line ValueErrors that name the field."""

from __future__ import annotations

import math
from typing import Any


def integer(name: str, value: Any, minimum: int = 1) -> int:
  """``value`` as an int >= ``minimum``; bools and non-integral numbers are refused."""
  if isinstance(value, bool) or not float(value).is_integer() or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def in_range(name: str, value: Any, low: float, high: float, *, closed: str = "both") -> float:
  """``value`` as a finite float in the interval; ``closed``: both | left | right | neither."""
  value = float(value)
  ok_low = value >= low if closed in ("both", "left") else value > low
  ok_high = value <= high if closed in ("both", "right") else value < high
  if not (ok_low and ok_high and math.isfinite(value)):
    left = "[" if closed in ("both", "left") else "("
    right = "]" if closed in ("both", "right") else ")"
    raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")
  return value


def at_least(name: str, value: Any, minimum: float, *, strict: bool) -> float:
  """``value`` as a finite float >= ``minimum`` (> with ``strict``)."""
  value = float(value)
  ok = value > minimum if strict else value >= minimum
  if not ok or not math.isfinite(value):
    raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum}, "
                     f"got {value!r}")
  return value
