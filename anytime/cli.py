"""What the command line needs besides parsing and dispatch: argv normalisation, the config
file's checks, and how a command ends when it cannot finish.

A user's mistake (bad input, a damaged or locked workdir, a diverged run) ends in ONE line,
``error: ...`` on standard error, exit status 1, nothing printed after it; Ctrl-C ends in one
line that says how to resume, exit status 130. ``ANYTIME_TRACEBACK=1`` shows the traceback
instead.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import sys
import threading
from typing import Callable, Iterator

from absl import app, flags, logging
from ml_collections import config_flags

INTERRUPTED = ("interrupted: re-run the same command to resume (finished runs and saved "
               "checkpoints are kept)")
# A schedule's keys depend on its name: the command line may set any of them (see
# config.apply_schedule_options), so they are taken out of argv before config_flags sees them.
SCHEDULE_PREFIX = "--config.optimizer.schedule."

_started = []  # non-empty once main() runs: errors before that come from the config file


class ListParser(flags.ArgumentParser):
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


config_flags.register_flag_parser_for_type(list, ListParser())


# ------------------------------------------------------------------------------ argv


def config_path(argv: list[str]) -> str | None:
  """The value of ``--config`` in argv (``--config F`` or ``--config=F``), or None."""
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
  return None


def normalize_dashes(argv: list[str]) -> list[str]:
  """Accepts --from-step as well as --from_step (but leaves --config.x=y untouched)."""
  out = []
  for arg in argv:
    if arg.startswith("--") and not arg.startswith("--config"):
      name, eq, value = arg[2:].partition("=")
      arg = "--" + name.replace("-", "_") + eq + value
    out.append(arg)
  return out


def _literal(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def take_schedule_options(argv: list[str]) -> tuple[list[str], dict[str, object]]:
  """Removes ``--config.optimizer.schedule.KEY=VALUE`` (or ``... KEY VALUE``) from argv."""
  rest, values, i = [], {}, 0
  while i < len(argv):
    arg = argv[i]
    if arg.startswith(SCHEDULE_PREFIX):
      key, eq, value = arg[len(SCHEDULE_PREFIX):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          sys.exit(f"error: {arg} needs a value")
        value, i = argv[i + 1], i + 1
      if not key or "." in key:
        sys.exit(f"error: {arg.partition('=')[0]}: give one schedule option, e.g. "
                 f"{SCHEDULE_PREFIX}total_steps=1000")
      values[key] = _literal(value)
    else:
      rest.append(arg)
    i += 1
  return rest, values


def ints(flag: str, values: list[str]) -> list[int]:
  try:
    return [int(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} takes comma-separated integers, got {','.join(values)!r}") \
        from None


def floats(flag: str, values: list[str]) -> list[float]:
  try:
    return [float(v) for v in values]
  except ValueError:
    raise ValueError(f"--{flag} takes comma-separated numbers, got {','.join(values)!r}") \
        from None


# ------------------------------------------------------------------------------ the config file


def check_config_file(argv: list[str]) -> None:
  """A missing or unparsable --config file, in one line (before absl and config_flags)."""
  value = config_path(argv)
  if value is None:
    return
  path = value.split(":", 1)[0]
  if not os.path.isfile(path):
    sys.exit(f"error: --config {path}: no such file")
  try:
    with open(path, "rb") as f:
      compile(f.read(), path, "exec")
  except (SyntaxError, ValueError) as e:
    line = f":{e.lineno}" if getattr(e, "lineno", None) else ""
    sys.exit(f"error: --config {path}{line}: {type(e).__name__}: {getattr(e, 'msg', e)}")


def checked_config(config, example: str):
  """The parsed --config, or one line saying what is wrong with it."""
  path = config_path(sys.argv)
  if path is None:
    raise app.UsageError(f"--config is required (e.g. {example})")
  if config is None or not hasattr(config, "to_dict"):
    raise ValueError(f"--config {path}: get_config() returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict")
  return config


def checked_training_config(config, schedule_options: dict[str, object]):
  """The parsed training --config: complete (every key of the schema), schedule options set."""
  from anytime import config as config_lib  # pylint: disable=g-import-not-at-top

  config = checked_config(config, "configs/lm_tiny.py")
  config_lib.require_every_key(config, f"--config {config_path(sys.argv)}")
  config_lib.apply_schedule_options(config, schedule_options)
  return config


# ------------------------------------------------------------------------------ how a command ends


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


@contextlib.contextmanager
def naming_damaged_snapshots() -> Iterator[None]:
  """A storage error about a post-hoc snapshot becomes a ValueError that says what to do."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    damaged = _snapshot_error(e)
    if damaged is None:
      raise
    raise ValueError(f"a post-hoc snapshot is damaged or truncated ({damaged}); take the "
                     "snapshots again (train with --config.train.snapshot_every) or choose "
                     "--step values whose snapshots are intact") from e


def _expected_errors() -> tuple[type[BaseException], ...]:
  """What a user can cause (bad input, a damaged or locked workdir, a diverged run)."""
  from anytime import checkpoint, guard  # pylint: disable=g-import-not-at-top

  return (ValueError, OSError, checkpoint.WorkdirLocked, guard.TrainingError)


def _one_line(e: BaseException) -> str:
  text = " ".join(str(e).split()) or type(e).__name__
  return text if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {text}"


def exit_with_line(line: str, status: int) -> None:
  """Writes ``line`` as the last thing on standard error and ends the process at once.

  The command's own cleanup (finally blocks: checkpoint stores, lock, metrics) has run. Storage
  threads of an aborted restore may still report their own failure: standard error goes to
  /dev/null *before* the line is written (to a saved copy of it), so nothing can print after
  it, and the interpreter's teardown is skipped."""
  sys.stdout.flush()
  sys.stderr.flush()
  stderr = os.dup(sys.stderr.fileno())
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  os.write(stderr, f"{line}\n".encode())
  os._exit(status)  # pylint: disable=protected-access


def _interrupted(*_) -> None:
  exit_with_line(INTERRUPTED, 130)


def _with_clear_errors(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  def wrapped(argv: list[str]) -> None:
    _started.append(True)
    if not flags.FLAGS["verbosity"].present:  # libraries' INFO logs would drown the progress
      logging.set_verbosity(logging.WARNING)
    try:
      main(argv)
    except KeyboardInterrupt:
      if os.environ.get("ANYTIME_TRACEBACK"):
        raise
      _interrupted()
    except Exception as e:  # pylint: disable=broad-except
      if os.environ.get("ANYTIME_TRACEBACK") or not isinstance(e, _expected_errors()):
        raise
      exit_with_line(f"error: {_one_line(e)}", 1)
  return wrapped


def run(main: Callable[[list[str], dict[str, object]], None]) -> None:
  """Runs ``main(argv, schedule_options)`` under absl with the endings described above."""
  argv, schedule_options = take_schedule_options(normalize_dashes(sys.argv))
  entry = _with_clear_errors(lambda args: main(args, schedule_options))
  if os.environ.get("ANYTIME_TRACEBACK"):
    sys.argv = argv
    app.run(entry)
    return
  check_config_file(argv[1:])
  sys.argv = argv
  sys.stderr = QuietClosedLoop(sys.stderr)
  try:
    app.run(entry)
  except KeyboardInterrupt:  # before main(): while the config file or the libraries load
    _interrupted()
  except (AttributeError, KeyError) as e:  # raised by config_flags while parsing --config.x=y
    overrides = [a.split("=", 1)[0] for a in sys.argv if a.startswith("--config.")]
    if _started:
      raise
    if not overrides:
      sys.exit(f"error: --config {config_path(sys.argv)}: get_config() failed: "
               f"{type(e).__name__}: {' '.join(str(e).split())}")
    sys.exit(f"error: one of {', '.join(overrides)} names a config key that does not exist "
             f"({str(e).strip(chr(34))}); the keys and their defaults are in "
             "anytime/config.py:default_config()")
  except Exception as e:  # pylint: disable=broad-except
    if _started:
      raise
    # Before main(): config_flags ran the config file's get_config(), and it failed.
    sys.exit(f"error: --config {config_path(sys.argv)}: get_config() failed: "
             f"{type(e).__name__}: {' '.join(str(e).split())}")
  finally:  # a Ctrl-C while the interpreter shuts down: the same one line
    signal.signal(signal.SIGINT, _interrupted)


class QuietClosedLoop:
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


# The names tests/test_reliability.py reaches through anytime.main.
_QuietClosedLoop = QuietClosedLoop
_take_free_form = take_schedule_options


def _apply_schedule_overrides(config, options: dict[str, object]) -> None:
  from anytime import config as config_lib  # pylint: disable=g-import-not-at-top

  config_lib.apply_schedule_options(config, options)
