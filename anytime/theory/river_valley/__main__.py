"""``python -m anytime.theory.river_valley --config configs/river_valley.py --workdir DIR``."""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from anytime.theory.river_valley.lab import run_lab

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to the lab config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for CSV/JSON/PNG outputs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    run_lab(_CONFIG.value, _WORKDIR.value)
  except ValueError as e:  # bad config: one line naming the field.
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
