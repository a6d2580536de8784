"""Command line: train, branch, compare, report, posthoc (argv handling and errors: anytime.cli).

    python -m anytime.main --config configs/lm_tiny.py --workdir DIR [--config.x=y ...]
    python -m anytime.main branch --workdir DIR --from-step S --cooldown-steps K --shape 1-sqrt
    python -m anytime.main compare --config configs/compare_tiny.py --workdir DIR [--dry-run]
    python -m anytime.main report --workdir DIR
    python -m anytime.main posthoc --workdir DIR --step S --sigma-rel 0.02,0.05,0.1,0.2
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from anytime import cli

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
_START_OVER = flags.DEFINE_bool(
    "start_over", False, "train: start from step 0 in a workdir whose checkpoints are gone "
    "(its config.json and metrics.jsonl are moved to main/previous-<n>/, never deleted).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "compare: print the plan, train nothing.")
_STEP = flags.DEFINE_list("step", [], "posthoc: target steps.")
_SIGMA_REL = flags.DEFINE_list("sigma_rel", [], "posthoc: target sigma_rel values.")


def main(argv: list[str], schedule_options: dict[str, object] | None = None) -> None:
  # pylint: disable=g-import-not-at-top  (each command imports only what it runs)
  command = argv[1] if len(argv) > 1 else "train"
  if command not in COMMANDS or len(argv) > 2:
    raise app.UsageError(f"command must be one of {COMMANDS}, got {' '.join(argv[1:])!r}")
  if not (workdir := _WORKDIR.value):
    raise app.UsageError("--workdir is required")
  from anytime import parallel

  parallel.use_compilation_cache()
  if command == "train":
    from anytime import branches
    config = cli.checked_training_config(_CONFIG.value, schedule_options or {})
    _print_floats(branches.train(config, workdir, start_over=_START_OVER.value))
  elif command == "branch":
    from anytime import branches
    if _FROM_STEP.value is None or _COOLDOWN_STEPS.value is None:
      raise app.UsageError("branch needs --from-step and --cooldown-steps")
    _print_floats(branches.branch(
        workdir, from_step=_FROM_STEP.value, cooldown_steps=_COOLDOWN_STEPS.value,
        shape=_SHAPE.value, final_fraction=_FINAL_FRACTION.value, name=_NAME.value,
        mode=_MODE.value))
  elif command == "compare":
    parallel.use_cpu_devices()  # before JAX starts: a suite's runs are sharded over the cores
    from anytime.experiments import compare
    config = cli.checked_config(_CONFIG.value, "configs/compare_tiny.py")
    compare.run_suite(config, workdir, dry_run=_DRY_RUN.value)
  elif command == "report":
    from anytime.experiments import compare
    compare.write_report(workdir)
  else:
    from anytime.experiments import posthoc_eval
    if not _STEP.value or not _SIGMA_REL.value:
      raise app.UsageError("posthoc needs --step and --sigma-rel")
    steps, sigma_rels = cli.ints("step", _STEP.value), cli.floats("sigma-rel", _SIGMA_REL.value)
    with cli.naming_damaged_snapshots():
      posthoc_eval.run(workdir, steps=steps, sigma_rels=sigma_rels)


def _print_floats(result: dict) -> None:
  print({k: round(v, 4) for k, v in result.items() if isinstance(v, float)})


def run() -> None:
  cli.run(main)


if __name__ == "__main__":
  run()
