"""``python -m anytime.theory.linreg --config configs/linreg_figure3.py --workdir DIR``."""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from anytime.theory.linreg.experiments import EXPERIMENTS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (CSV, JSON, PNG).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  config = _CONFIG.value
  try:
    if config.experiment not in EXPERIMENTS:
      raise ValueError(f"config.experiment must be one of {sorted(EXPERIMENTS)}, "
                       f"got {config.experiment!r}")
    EXPERIMENTS[config.experiment](config, _WORKDIR.value,
                                   progress=lambda m: print(m, flush=True))
  except ValueError as e:  # bad config: one line naming the field.
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
