"""Command line: train, branch, compare, report, posthoc.

    python -m anytime.main --config configs/lm_tiny.py --workdir DIR [--config.x=y ...]
    python -m anytime.main branch --workdir DIR --from-step S --cooldown-steps K --shape 1-sqrt
    python -m anytime.main compare --config configs/compare_tiny.py --workdir DIR
    python -m anytime.main report --workdir DIR
    python -m anytime.main posthoc --workdir DIR --step S --sigma-rel 0.02,0.05,0.1,0.2
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "branch", "compare", "report", "posthoc")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (local path or gs://...).")
_FROM_STEP = flags.DEFINE_integer("from_step", None, "branch: main-branch step to branch from.")
_COOLDOWN_STEPS = flags.DEFINE_integer("cooldown_steps", None, "branch: length of the decay.")
_SHAPE = flags.DEFINE_string("shape", "linear", "branch: cooldown shape.")
_FINAL_FRACTION = flags.DEFINE_float("final_fraction", 0.0, "branch: final LR fraction.")
_NAME = flags.DEFINE_string("name", "", "branch: name (default <shape>_<end step>).")
_MODE = flags.DEFINE_string("mode", "wsd", "branch: 'wsd' or 'wsd_s'.")
_STEP = flags.DEFINE_list("step", [], "posthoc: target steps.")
_SIGMA_REL = flags.DEFINE_list("sigma_rel", [], "posthoc: target sigma_rel values.")


def _normalize_dashes(argv: list[str]) -> list[str]:
  """Accepts --from-step as well as --from_step (but leaves --config.x=y untouched)."""
  out = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out


def main(argv: list[str]) -> None:
  if not flags.FLAGS["verbosity"].present:  # libraries' INFO logs would drown the progress lines
    logging.set_verbosity(logging.WARNING)
  command = argv[1] if len(argv) > 1 else "train"
  if command not in COMMANDS or len(argv) > 2:
    raise app.UsageError(f"command must be one of {COMMANDS}, got {' '.join(argv[1:])!r}")
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required")
  workdir = _WORKDIR.value
  from anytime import parallel  # pylint: disable=g-import-not-at-top

  parallel.use_compilation_cache()
  if command == "train":
    if _CONFIG.value is None:
      raise app.UsageError("--config is required (e.g. configs/lm_tiny.py)")
    from anytime import branches  # pylint: disable=g-import-not-at-top

    result = branches.train(_CONFIG.value, workdir)
    print({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
  elif command == "branch":
    if _FROM_STEP.value is None or _COOLDOWN_STEPS.value is None:
      raise app.UsageError("branch needs --from-step and --cooldown-steps")
    from anytime import branches  # pylint: disable=g-import-not-at-top

    result = branches.branch(workdir, from_step=_FROM_STEP.value,
                           cooldown_steps=_COOLDOWN_STEPS.value, shape=_SHAPE.value,
                           final_fraction=_FINAL_FRACTION.value, name=_NAME.value,
                           mode=_MODE.value)
    print({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})
  elif command in ("compare", "report"):
    from anytime.experiments import compare  # pylint: disable=g-import-not-at-top

    if command == "compare":
      if _CONFIG.value is None:
        raise app.UsageError("--config is required (e.g. configs/compare_tiny.py)")
      compare.run_suite(_CONFIG.value, workdir)
    else:
      compare.write_report(workdir)
  elif command == "posthoc":
    from anytime.experiments import posthoc_eval  # pylint: disable=g-import-not-at-top

    if not _STEP.value or not _SIGMA_REL.value:
      raise app.UsageError("posthoc needs --step and --sigma-rel")
    posthoc_eval.run(workdir, steps=[int(s) for s in _STEP.value],
                     sigma_rels=[float(s) for s in _SIGMA_REL.value])


def _main_with_clear_errors(argv: list[str]) -> None:
  """Bad input ends in one line naming what is wrong (ANYTIME_TRACEBACK=1 shows the trace)."""
  try:
    main(argv)
  except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
    if os.environ.get("ANYTIME_TRACEBACK"):
      raise
    sys.exit(f"error: {e}")


def run() -> None:
  sys.argv = _normalize_dashes(sys.argv)
  try:
    app.run(_main_with_clear_errors)
  except (AttributeError, KeyError) as e:  # raised by config_flags while parsing --config.x=y
    overrides = [a.split("=", 1)[0] for a in sys.argv if a.startswith("--config.")]
    if not overrides or os.environ.get("ANYTIME_TRACEBACK"):
      raise
    sys.exit(f"error: one of {', '.join(overrides)} names a config key that does not exist "
             f"({str(e).strip(chr(34))}); the keys and their defaults are in "
             "anytime/config.py:default_config()")


if __name__ == "__main__":
  run()
