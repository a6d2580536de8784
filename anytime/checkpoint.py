"""Orbax checkpoints of the main branch and of decay branches.

Layout of a workdir::

    workdir/main/            the main branch: checkpoints <step>/{state,data}, config.json,
                             metrics.jsonl, tensorboard events
    workdir/main/snapshots/  post-hoc averaging snapshots (anytime.posthoc)
    workdir/branches/<name>/ one decay branch each, with lineage.json (parent step, shape, ...)

Each checkpoint holds the train state (params, optimizer state with every average, step, RNG)
and the data iterator's state, saved asynchronously. Retention keeps the latest few, every K-th
step, and any step named explicitly (branch points), so decay branches can always start from
the main branch. Nothing here uses pickle.
"""

from __future__ import annotations

import errno
import contextlib
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

import grain

LOCK_FILE = ".lock"
# Written next to every checkpoint directory's steps; a restore refuses another format.
FORMAT_FILE = "checkpoint_format.json"
FORMAT_VERSION = 1
# Steps retention must keep whatever the other rules say (e.g. the last state before a NaN
# streak), recorded so that they stay kept after a resume.
PROTECTED_FILE = "protected_steps.json"


def config_hash(config_dict: Mapping[str, Any]) -> str:
  """A short stable hash of a resolved config (for lineage records)."""
  text = json.dumps(config_dict, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class _KeepSteps(ocp.checkpoint_managers.PreservationPolicy):
  """Preserves the steps of a set that may grow while the manager lives."""

  def __init__(self, steps: set[int]):
    self.steps = steps

  def should_preserve(self, checkpoints, *, context):
    del context
    return [c.step in self.steps for c in checkpoints]


class _Notices(logging.Filter):
  """Drops absl log records whose message contains any of ``fragments``."""

  def __init__(self, fragments: tuple[str, ...]):
    super().__init__()
    self.fragments = fragments

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(f in message for f in self.fragments)


@contextlib.contextmanager
def _quiet(*fragments: str):
  logger, notices = logging.getLogger("absl"), _Notices(fragments)
  logger.addFilter(notices)
  try:
    yield
  finally:
    logger.removeFilter(notices)


def quiet_read_only_notices():
  """Drops Orbax's read-only notices (two warnings per read-only ``CheckpointManager``;
  reading is no problem) while one is created."""
  return _quiet("CheckpointManagerOptions.read_only=True", "Given directory is read only")


class CheckpointStore:
  """An Orbax ``CheckpointManager`` over (train state, data iterator) with a retention policy.

  Args:
    directory: where the step folders go.
    keep_latest: how many of the newest checkpoints to keep.
    keep_period: also keep every checkpoint whose step is a multiple of this (0 = none).
    keep_steps: also keep these steps (e.g. planned branch points).
    async_save: write in a background thread (the step loop goes on).
  """

  def __init__(self, directory: str | epath.Path, *, keep_latest: int = 3, keep_period: int = 0,
               keep_steps: Iterable[int] = (), async_save: bool = True, read_only: bool = False):
    if keep_latest < 1:
      raise ValueError(f"train.keep_checkpoints must be >= 1, got {keep_latest}")
    self.directory = epath.Path(directory)
    self.read_only = read_only
    policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep_latest)]
    if keep_period:
      policies.append(ocp.checkpoint_managers.EveryNSteps(interval_steps=keep_period))
    stored = read_json(self.directory / PROTECTED_FILE) if not read_only else None
    self._protected = set((stored or {}).get("steps", []))
    self._keep = _KeepSteps(set(int(s) for s in keep_steps) | self._protected)
    policies.append(self._keep)
    self._check_format(write=not read_only)
    with quiet_read_only_notices():
      options = ocp.CheckpointManagerOptions(
          preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
          enable_async_checkpointing=async_save,
          create=not read_only,
          read_only=read_only,
      )
      self.manager = ocp.CheckpointManager(self.directory, options=options,
                                           item_names=("state", "data"))

  def _check_format(self, write: bool) -> None:
    """Refuses checkpoints of another format version; records ours in a new directory."""
    path = self.directory / FORMAT_FILE
    stored = read_json(path) if path.exists() else None
    if stored is not None and stored.get("format") != FORMAT_VERSION:
      raise ValueError(
          f"{self.directory} holds checkpoints of format {stored.get('format')!r} (written with "
          f"orbax-checkpoint {stored.get('orbax')}), this version of anytime reads format "
          f"{FORMAT_VERSION}; use the anytime version that wrote them")
    if stored is None and write:
      check_writable(self.directory, field="checkpoint directory")
      write_json(path, {"format": FORMAT_VERSION, "orbax": ocp.__version__})

  def protect(self, step: int) -> None:
    """Retention keeps ``step`` from now on (also after a resume), whatever else it deletes."""
    if step in self._protected:
      return
    self._protected.add(int(step))
    self._keep.steps.add(int(step))
    write_json(self.directory / PROTECTED_FILE, {"steps": sorted(self._protected)})

  def protected_steps(self) -> list[int]:
    return sorted(self._protected)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_iterator: Any | None = None, *,
           force: bool = True) -> bool:
    # Orbax waits ~300 s before reporting an unwritable directory; a probe fails at once.
    check_writable(self.directory, field="checkpoint directory")
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, abstract_state: Any, data_iterator: Any | None = None) -> Any:
    """Restores ``step`` onto ``abstract_state`` (ShapeDtypeStructs carrying shardings).

    The set of averages (``anytime.averaging``) may differ from the checkpoint's: an average
    the checkpoint lacks starts from the restored params at the restored step (recorded in its
    state), one the target lacks is not read; one printed line names them.
    """
    saved = self._saved_tree(step)
    keys = None if saved is None else {
        _key_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]}
    added, dropped = _average_changes(keys, abstract_state)
    target = abstract_state
    if added or dropped:  # read the dropped ones too (then forget them): Orbax wants all
      target = _swap_averages(abstract_state, added, dropped, saved)
    items = {"state": ocp.args.StandardRestore(target)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
    if added or dropped:
      restored = _with_new_averages(restored, abstract_state, added)
      print(f"checkpoint {self.directory}/{step}: averages added "
            f"{', '.join(sorted(added)) or 'none'} (they start from the restored params), "
            f"dropped {', '.join(sorted(dropped)) or 'none'}", flush=True)
    return restored

  def _saved_tree(self, step: int) -> Any:
    """The tree metadata of the checkpoint's train state (None when unreadable)."""
    # Reading the tree metadata without the items' handlers makes Orbax warn, per item, that
    # it "could not be restored"; the metadata is all that is read here.
    try:
      with _quiet("was found in the checkpoint, but could not be restored"):
        metadata = self.manager.item_metadata(step)["state"]
    except Exception:  # pylint: disable=broad-except
      return None
    return getattr(metadata, "tree", metadata)

  def restore_latest_intact(self, abstract_state: Any, data_iterator_factory=None,
                            before: int | None = None) -> tuple[int, Any, Any] | None:
    """Restores the newest checkpoint that loads; a damaged one is reported and skipped.

    Returns ``(step, state, data_iterator)`` or None when there is no checkpoint. A damaged
    checkpoint is renamed ``<step>.damaged[-k]`` (kept for inspection, never deleted), so the
    resumed run can write that step again.
    """
    for step in reversed(self.all_steps()):
      if before is not None and step > before:
        continue
      if data_iterator_factory:
        self._check_process_count(step)
      iterator = data_iterator_factory() if data_iterator_factory else None
      try:
        state = self.restore(step, abstract_state, iterator)
      except Exception as e:  # pylint: disable=broad-except
        logging.error("checkpoint %s/%d is damaged or unreadable (%s: %s); falling back to "
                      "an older one (the damaged one is left in place)", self.directory, step,
                      type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        kept = self.directory / str(step) if self.read_only else self._set_aside(step)
        print(f"WARNING: checkpoint step {step} in {self.directory} could not be restored "
              f"({type(e).__name__}); trying an older one. It is kept as {kept}.", flush=True)
        continue
      return step, state, iterator
    return None

  def _set_aside(self, step: int) -> epath.Path:
    """Renames a damaged step folder out of Orbax's view (process 0), then syncs processes."""
    source = self.directory / str(step)
    target = self.directory / f"{step}.damaged"
    k = 0
    while target.exists():
      k += 1
      target = self.directory / f"{step}.damaged-{k}"
    if jax.process_index() == 0:
      source.rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f"anytime_set_aside_{step}")
    self.manager.reload()
    return target

  def _check_process_count(self, step: int) -> None:
    """A data iterator state saved by another number of processes is an error, not damage."""
    data = self.directory / str(step) / "data"
    current = f"-of-{jax.process_count()}.json"
    saved = sorted(p.name for p in data.glob("process_*-of-*.json")) if data.exists() else []
    if saved and not any(name.endswith(current) for name in saved):
      raise ValueError(
          f"checkpoint {self.directory}/{step} holds the data iterator state of "
          f"{saved[0].rsplit('-of-', 1)[1][:-5]} processes, but this run has "
          f"{jax.process_count()}; resume with the same number of processes, or restore "
          "only the train state (CheckpointStore.restore without a data iterator)")

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


# ---------------------------------------------------------------------------- changed averages


def _key_path(path) -> tuple[str, ...]:
  out = []
  for key in path:
    for attr in ("name", "key", "idx"):
      if hasattr(key, attr):
        out.append(str(getattr(key, attr)))
        break
  return tuple(out)


def _is_averages(x) -> bool:
  from anytime import averaging  # pylint: disable=g-import-not-at-top
  return isinstance(x, averaging.AveragesState)


def _average_changes(saved: set[tuple[str, ...]] | None, abstract_state: Any
                     ) -> tuple[set[str], set[str]]:
  """(names the target holds and the checkpoint lacks, names the checkpoint holds and the
  target lacks), over every ``AveragesState`` of the target."""
  if saved is None:
    return set(), set()
  added, dropped = set(), set()
  for path, holder in jax.tree_util.tree_flatten_with_path(abstract_state,
                                                           is_leaf=_is_averages)[0]:
    if not _is_averages(holder):
      continue
    prefix = _key_path(path) + ("averages",)
    in_checkpoint = {key[len(prefix)] for key in saved
                     if key[:len(prefix)] == prefix and len(key) > len(prefix)}
    if not in_checkpoint:  # this holder is new as a whole: not a change of averages
      continue
    added |= set(holder.averages) - in_checkpoint
    dropped |= in_checkpoint - set(holder.averages)
  return added, dropped


def _swap_averages(abstract_state: Any, added: set[str], dropped: set[str], saved: Any) -> Any:
  """The restore target: ``abstract_state`` without the ``added`` averages and with the
  ``dropped`` ones as the checkpoint's metadata describes them (on one device)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  paths = {id(h): _key_path(p) for p, h in jax.tree_util.tree_flatten_with_path(
      abstract_state, is_leaf=_is_averages)[0] if _is_averages(h)}

  def saved_at(path):
    node = saved
    for key in path:
      node = node[int(key)] if isinstance(node, (list, tuple)) else node[key]
    return node

  def swap(holder):
    kept = {k: v for k, v in holder.averages.items() if k not in added}
    for name in dropped:
      try:
        meta = saved_at(paths[id(holder)] + ("averages", name))
      except (KeyError, IndexError, TypeError):
        continue
      kept[name] = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device), meta)
    return holder._replace(averages=kept)

  return jax.tree.map(lambda x: swap(x) if _is_averages(x) else x, abstract_state,
                      is_leaf=_is_averages)


def _with_new_averages(restored: Any, abstract_state: Any, added: set[str]) -> Any:
  """``restored`` with the ``added`` averages (shaped, typed and placed as in
  ``abstract_state``) started from its params at its step."""
  from anytime import averaging  # pylint: disable=g-import-not-at-top
  params = getattr(restored, "params", None)
  if params is None and isinstance(restored, Mapping):
    params = restored.get("params")
  if added and params is None:
    raise ValueError("the restored state has no `params` field to start the added averages "
                     f"{sorted(added)} from; add them with averaging.start_average")
  abstract_holders = [x for x in jax.tree.leaves(abstract_state, is_leaf=_is_averages)
                      if _is_averages(x)]
  holders = iter(abstract_holders)
  starts = {}
  for x in jax.tree.leaves(restored, is_leaf=lambda y: isinstance(y, averaging.WithAveragesState)):
    if isinstance(x, averaging.WithAveragesState):
      starts[id(x.averages)] = x.step

  def fill(holder):
    want = next(holders)
    start = starts.get(id(holder), holder.step)
    new = {name: averaging.start_average(want.averages[name], params, start)
           for name in want.averages if name in added}
    return holder._replace(averages={name: new[name] if name in added else holder.averages[name]
                                     for name in want.averages})

  return jax.tree.map(lambda x: fill(x) if _is_averages(x) else x, restored, is_leaf=_is_averages)


def write_json(path: epath.Path, payload: Mapping[str, Any]) -> None:
  """Writes JSON atomically (temp file + rename), from process 0 only."""
  if jax.process_index() != 0:
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / (path.name + ".tmp")
  tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
  tmp.replace(path)  # rename() refuses an existing destination


def read_json(path: epath.Path) -> dict[str, Any] | None:
  path = epath.Path(path)
  return json.loads(path.read_text()) if path.exists() else None


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any],
                       safe_to_change: Sequence[str] = (),
                       defaults: Mapping[str, Any] | None = None) -> list[str]:
  """Dotted keys whose values differ between two config dicts, minus the safe ones.

  ``defaults`` (dotted keys): a key missing from ``stored`` (written before the key existed)
  counts as having its default there.
  """
  a, b = flatten(stored), flatten(current)
  a = {**{k: v for k, v in (defaults or {}).items() if k not in a}, **a}
  normalize = lambda v: json.loads(json.dumps(v, default=str))
  diffs = sorted(k for k in set(a) | set(b) if normalize(a.get(k)) != normalize(b.get(k)))
  return [k for k in diffs if not any(k == s or k.startswith(s + ".") for s in safe_to_change)]


# ---------------------------------------------------------------------------- workdir checks


class WorkdirLocked(RuntimeError):
  """Another live process holds the run directory."""


def _is_local(path: epath.Path) -> bool:
  return "://" not in os.fspath(path)


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _holder_text(holder: Mapping[str, Any] | None) -> str:
  if not holder:
    return "an unknown process"
  started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("start_time", 0)))
  return (f"pid {holder.get('pid')} on host {holder.get('host')} (since {started}, "
          f"command {holder.get('command', '?')!r})")


class DirectoryLock:
  """An exclusive lock on one run directory, held by one process for the length of a run.

  Local paths use ``fcntl.flock`` on ``<directory>/.lock`` (the kernel drops it when the
  holder dies, so a crash never leaves a stale lock). Remote paths (``gs://...``) use a lock
  file written only when absent, refreshed every ``refresh_s`` by a daemon thread; it counts as
  stale when its holder is on this host and dead, or when it was not refreshed for
  ``stale_after_s``. The file always records the holder's pid, host, start time and command.
  On multi-host runs only process 0 takes the lock (``acquire`` is a no-op elsewhere).
  """

  def __init__(self, directory: str | epath.Path, *, refresh_s: float = 60.0,
               stale_after_s: float = 600.0):
    self.directory = epath.Path(directory)
    self.path = self.directory / LOCK_FILE
    self.refresh_s, self.stale_after_s = refresh_s, stale_after_s
    self._fd: int | None = None
    self._token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self.held = False

  def _record(self) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start_time": time.time(),
            "updated": time.time(), "command": " ".join(sys.argv)[:300],
            "token": self._token}

  def read_holder(self) -> dict[str, Any] | None:
    try:
      text = self.path.read_text()
      return json.loads(text) if text.strip() else None
    except (FileNotFoundError, json.JSONDecodeError, OSError):
      return None

  def acquire(self) -> "DirectoryLock":
    """Takes the lock or raises WorkdirLocked naming the holder (process 0 only)."""
    if jax.process_index() != 0:
      return self
    self.directory.mkdir(parents=True, exist_ok=True)
    if _is_local(self.directory):
      self._acquire_local()
    else:
      self._acquire_remote()
    self.held = True
    return self

  def _refuse(self, holder: Mapping[str, Any] | None) -> None:
    raise WorkdirLocked(
        f"{self.directory} is in use by {_holder_text(holder)}; wait for it to finish or stop "
        f"it (two processes writing one run would corrupt it). If that process is gone, "
        f"delete {self.path}")

  def _acquire_local(self) -> None:
    import fcntl  # pylint: disable=g-import-not-at-top

    fd = os.open(os.fspath(self.path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        self._refuse(self.read_holder())
      raise
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(self._record()).encode())
    os.fsync(fd)
    self._fd = fd

  def _stale(self, holder: Mapping[str, Any] | None) -> bool:
    if holder is None:
      return True
    if holder.get("host") == socket.gethostname() and not _pid_alive(int(holder.get("pid", -1))):
      return True
    return time.time() - float(holder.get("updated", 0)) > self.stale_after_s

  def _acquire_remote(self) -> None:
    holder = self.read_holder() if self.path.exists() else None
    if self.path.exists() and not self._stale(holder):
      self._refuse(holder)
    if holder is not None:
      logging.warning("taking over the stale lock %s of %s", self.path, _holder_text(holder))
    self.path.write_text(json.dumps(self._record()))
    time.sleep(0.5)  # a concurrent taker writes too: the last writer wins, the other refuses
    if (self.read_holder() or {}).get("token") != self._token:
      self._refuse(self.read_holder())
    self._thread = threading.Thread(target=self._refresh, daemon=True,
                                    name=f"lock-refresh {self.path}")
    self._thread.start()

  def _refresh(self) -> None:
    while not self._stop.wait(self.refresh_s):
      holder = self.read_holder()
      if holder is None or holder.get("token") != self._token:
        logging.error("lock %s was taken by %s", self.path, _holder_text(holder))
        return
      self.path.write_text(json.dumps({**holder, "updated": time.time()}))

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    if self._fd is not None:
      import fcntl  # pylint: disable=g-import-not-at-top

      os.ftruncate(self._fd, 0)  # the file stays (deleting it would race a new taker)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
    else:
      self._stop.set()
      if (self.read_holder() or {}).get("token") == self._token:
        self.path.unlink(missing_ok=True)

  def __enter__(self) -> "DirectoryLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def check_writable(directory: str | epath.Path, field: str = "--workdir") -> None:
  """Creates ``directory`` if needed and writes + deletes a probe file in it; raises
  PermissionError naming the path in one line if that fails (before any training)."""
  directory = epath.Path(directory)
  if jax.process_index() != 0:
    return
  probe = directory / f".write_probe-{os.getpid()}"
  if directory.exists() and not directory.is_dir():
    raise NotADirectoryError(f"{field}: {directory} exists and is not a directory")
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe.write_text("ok")
    probe.unlink()
  except OSError as e:
    raise PermissionError(f"{field}: cannot write to {directory} ({e.strerror or e}); fix its "
                          "permissions (or immutable flag / read-only mount) or pick another "
                          "directory") from e
