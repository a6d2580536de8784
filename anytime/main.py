"""Command line: train, branch, compare, report, posthoc.

    python -m anytime.main --config configs/lm_tiny.py --workdir DIR [--config.x=y ...]
    python -m anytime.main branch --workdir DIR --from-step S --cooldown-steps K --shape 1-sqrt
    python -m anytime.main compare --config configs/compare_tiny.py --workdir DIR
    python -m anytime.main report --workdir DIR
    python -m anytime.main posthoc --workdir DIR --step S --sigma-rel 0.02,0.05,0.1,0.2
"""

from __future__ import annotations

import ast
import os
import sys
import threading

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
_START_OVER = flags.DEFINE_bool(
    "start_over", False, "train: start from step 0 in a workdir whose checkpoints are gone "
    "(its config.json and metrics.jsonl are moved to main/previous-<n>/, never deleted).")
_STEP = flags.DEFINE_list("step", [], "posthoc: target steps.")
_SIGMA_REL = flags.DEFINE_list("sigma_rel", [], "posthoc: target sigma_rel values.")


class _ListParser(flags.ArgumentParser):
  """``--config.branches.budgets='[400,800]'`` (also ``400,800`` and ``[]``) for list fields."""

  def parse(self, argument):
    if isinstance(argument, list):
      return argument
    text = str(argument).strip()
    try:
      value = ast.literal_eval(text if text[:1] in "[(" else f"[{text}]")
    except (ValueError, SyntaxError):
      raise ValueError(f"expected a list such as '[400, 800]', got {argument!r}") from None
    if not isinstance(value, (list, tuple)):
      raise ValueError(f"expected a list such as '[400, 800]', got {argument!r}")
    return list(value)

  def flag_type(self):
    return "list"


config_flags.register_flag_parser_for_type(list, _ListParser())

# Sections whose keys depend on another key (a schedule's options depend on schedule.name): the
# command line may set any key there; the consumer (schedules.from_config) refuses unknown ones.
_FREE_FORM = "--config.optimizer.schedule."


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _take_free_form(argv: list[str]) -> tuple[list[str], dict[str, object]]:
  """Removes ``--config.optimizer.schedule.KEY=VALUE`` (or ``... KEY VALUE``) from argv."""
  rest, values, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(_FREE_FORM):
      key, eq, value = arg[len(_FREE_FORM):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          sys.exit(f"error: {arg} needs a value")
        value, i = argv[i + 1], i + 1
      if not key or "." in key:
        sys.exit(f"error: {arg.partition('=')[0]}: give one schedule option, e.g. "
                 f"{_FREE_FORM}total_steps=1000")
      values[key] = _literal(value)
    else:
      rest.append(arg)
    i += 1
  return rest, values


def _apply_schedule_overrides(config, values: dict[str, object]) -> None:
  """Sets schedule options from the command line; switching ``name`` drops the file's options
  that the new schedule does not take (and says so)."""
  if not values:
    return
  import inspect  # pylint: disable=g-import-not-at-top

  from anytime import schedules  # pylint: disable=g-import-not-at-top

  schedule = config.optimizer.schedule.to_dict()
  name = values.get("name", schedule.get("name"))
  if name not in schedules.SCHEDULES:
    raise ValueError(f"optimizer.schedule.name must be one of {sorted(schedules.SCHEDULES)}, "
                     f"got {name!r}")
  if name != schedule.get("name"):
    accepted = set(inspect.signature(schedules.SCHEDULES[name]).parameters) | {"decay"}
    dropped = sorted(k for k in schedule if k != "name" and k not in accepted)
    if dropped:
      print(f"note: optimizer.schedule.name={name}: dropped {', '.join(dropped)} from the config "
            f"file (not options of {name!r})", flush=True)
    schedule = {k: v for k, v in schedule.items() if k == "name" or k in accepted}
  schedule.update(values)
  config.unlock()
  config.optimizer.schedule = schedule
  config.lock()


def _normalize_dashes(argv: list[str]) -> list[str]:
  """Accepts --from-step as well as --from_step (but leaves --config.x=y untouched)."""
  out = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out


_SCHEDULE_OVERRIDES: dict[str, object] = {}
_STARTED = []  # non-empty once flags are parsed: errors before that come from the config file


def _ints(flag: str, values: list[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} takes comma-separated integers, got {','.join(values)!r}") \
        from None


def _floats(flag: str, values: list[str]) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} takes comma-separated numbers, got {','.join(values)!r}") \
        from None


def _checked_config(example: str):
  """The parsed --config, or one line saying what is wrong with it."""
  if _config_path(sys.argv) == "?":
    raise app.UsageError(f"--config is required (e.g. {example})")
  config = _CONFIG.value
  filename = _config_path(sys.argv)
  if config is None or not hasattr(config, "to_dict"):
    raise ValueError(f"--config {filename}: get_config() returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict")
  return config


def _check_schema(config) -> None:
  """A training config must hold every key of the schema (start from default_config())."""
  from anytime import checkpoint  # pylint: disable=g-import-not-at-top
  from anytime import config as config_lib  # pylint: disable=g-import-not-at-top

  have = set(checkpoint.flatten(config.to_dict()))
  missing = sorted(k for k in checkpoint.flatten(config_lib.default_config().to_dict())
                   if k not in have and not any(k.startswith(h + ".") for h in have)
                   and not k.startswith("optimizer.schedule.")
                   and not k.startswith("optimizer.averages."))
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise ValueError(f"--config {_config_path(sys.argv)}: the config lacks {shown}; build it from "
                     "default_config() and change what differs")


def main(argv: list[str]) -> None:
  _STARTED.append(True)
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
  if command == "compare":
    parallel.use_cpu_devices()  # a suite's batched runs are sharded over the cores
  if command == "train":
    config = _checked_config("configs/lm_tiny.py")
    _check_schema(config)
    _apply_schedule_overrides(config, _SCHEDULE_OVERRIDES)
    from anytime import branches  # pylint: disable=g-import-not-at-top

    result = branches.train(config, workdir, start_over=_START_OVER.value)
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
      compare.run_suite(_checked_config("configs/compare_tiny.py"), workdir)
    else:
      compare.write_report(workdir)
  elif command == "posthoc":
    from anytime.experiments import posthoc_eval  # pylint: disable=g-import-not-at-top

    if not _STEP.value or not _SIGMA_REL.value:
      raise app.UsageError("posthoc needs --step and --sigma-rel")
    steps, sigma_rels = _ints("step", _STEP.value), _floats("sigma-rel", _SIGMA_REL.value)
    try:
      posthoc_eval.run(workdir, steps=steps, sigma_rels=sigma_rels)
    except Exception as e:  # pylint: disable=broad-except
      damaged = _snapshot_error(e)
      if damaged is None:
        raise
      raise ValueError(f"a post-hoc snapshot is damaged or truncated ({damaged}); take the "
                       "snapshots again (train with --config.train.snapshot_every) or choose "
                       "--step values whose snapshots are intact") from e


def _snapshot_error(error: BaseException) -> str | None:
  """The first line of a storage error about a file under ``snapshots/`` in ``error``'s chain."""
  seen, found = set(), None
  while error is not None and id(error) not in seen:  # the deepest mention is the plainest
    seen.add(id(error))
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "/snapshots/" in text:
      found = text[:300]
    error = error.__cause__ or error.__context__
  return found


def _expected_errors() -> tuple[type[BaseException], ...]:
  """What a user can cause (bad input, a damaged or locked workdir, a diverged run)."""
  from anytime import checkpoint  # pylint: disable=g-import-not-at-top

  errors = [ValueError, OSError, checkpoint.WorkdirLocked]
  trainer = sys.modules.get("anytime.loop")
  if trainer is not None:
    errors.append(trainer.TrainingError)
  return tuple(errors)


def _main_with_clear_errors(argv: list[str]) -> None:
  """Bad input ends in one line naming what is wrong (ANYTIME_TRACEBACK=1 shows the trace)."""
  try:
    main(argv)
  except Exception as e:  # pylint: disable=broad-except
    if os.environ.get("ANYTIME_TRACEBACK") or not isinstance(e, _expected_errors()):
      raise
    # The run's own cleanup (finally blocks: checkpoint stores, lock, metrics) has run. Storage
    # threads of an aborted restore may still report their own failure: standard error goes
    # to /dev/null *before* the line is written (to a saved copy of it), so nothing can print
    # after it, and the interpreter's teardown is skipped.
    sys.stdout.flush()
    sys.stderr.flush()
    stderr = os.dup(sys.stderr.fileno())
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
    os.write(stderr, f"error: {_one_line(e)}\n".encode())
    os._exit(1)  # pylint: disable=protected-access


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {text}"


def _check_config_file(argv: list[str]) -> None:
  """A missing or unparsable --config file, in one line (before absl and config_flags)."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    else:
      continue
    path = value.split(":", 1)[0]
    if not os.path.isfile(path):
      sys.exit(f"error: --config {path}: no such file")
    try:
      with open(path, "rb") as f:
        compile(f.read(), path, "exec")
    except (SyntaxError, ValueError) as e:
      line = f":{e.lineno}" if getattr(e, "lineno", None) else ""
      sys.exit(f"error: --config {path}{line}: {type(e).__name__}: {getattr(e, 'msg', e)}")


def run() -> None:
  global _SCHEDULE_OVERRIDES
  argv, _SCHEDULE_OVERRIDES = _take_free_form(_normalize_dashes(sys.argv))
  if os.environ.get("ANYTIME_TRACEBACK"):
    sys.argv = argv
    app.run(_main_with_clear_errors)
    return
  _check_config_file(argv[1:])
  sys.argv = argv
  sys.stderr = _QuietClosedLoop(sys.stderr)
  try:
    app.run(_main_with_clear_errors)
  except (AttributeError, KeyError) as e:  # raised by config_flags while parsing --config.x=y
    overrides = [a.split("=", 1)[0] for a in sys.argv if a.startswith("--config.")]
    if _STARTED or not overrides:
      if _STARTED:
        raise
      sys.exit(f"error: --config {_config_path(sys.argv)}: get_config() failed: "
               f"{type(e).__name__}: {' '.join(str(e).split())}")
    sys.exit(f"error: one of {', '.join(overrides)} names a config key that does not exist "
             f"({str(e).strip(chr(34))}); the keys and their defaults are in "
             "anytime/config.py:default_config()")
  except Exception as e:  # pylint: disable=broad-except
    if _STARTED:
      raise
    # Before main(): config_flags ran the config file's get_config(), and it failed.
    sys.exit(f"error: --config {_config_path(sys.argv)}: get_config() failed: "
             f"{type(e).__name__}: {' '.join(str(e).split())}")


class _QuietClosedLoop:
  """Standard error without one known aftermath of a failed read: after Orbax's restore has
  raised and closed its event loop, TensorStore's still-running reads call back into it from
  their own (non-Python) threads, and each prints a traceback ending in "RuntimeError: Event
  loop is closed". Such a thread's traceback is held until its last line; it is dropped if it
  is that one, written otherwise. Everything else passes straight through."""

  def __init__(self, stream):
    self._stream = stream
    self._held: dict[int, str] = {}  # thread -> the traceback it is writing

  def write(self, text: str) -> int:
    thread = threading.current_thread()
    foreign = isinstance(thread, threading._DummyThread)  # pylint: disable=protected-access
    if thread.ident not in self._held and not (
        foreign and text.startswith("Traceback (most recent call last)")):
      return self._stream.write(text)
    block = self._held.pop(thread.ident, "") + text
    last = block.rstrip("\n").rsplit("\n", 1)[-1]
    if not block.endswith("\n") or not last or last.startswith((" ", "Traceback")):
      self._held[thread.ident] = block  # the exception's own line has not come yet
    elif last != "RuntimeError: Event loop is closed":
      self._stream.write(block)
    return len(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _config_path(argv: list[str]) -> str:
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return "?"


if __name__ == "__main__":
  run()
