"""Executors: the units of one phase of the suite, run by an existing engine.

``suite.executor.name`` picks the engine:

- ``local``: the units in this process, one after the other (the default; no extra needed);
- ``ray``: each unit a Ray task with its resources declared (``{"CPU": n}``, ``{"GPU": n}``,
  ``{"TPU": chips}``; a multi-host TPU slice adds Ray's ``"TPU-<type>-head": 1`` and gets one
  task per host of the slice). ``ray.init()`` starts a local cluster when ``ray.address`` is
  empty, else joins that cluster. Ray places, retries and logs;
- ``slurm``: submitit, one job array per group of units that need the same resources (one job
  per unit), partition / GPUs / time / setup from the config. ``slurm.cluster="local"`` is
  submitit's local executor (subprocesses on this machine; what the tests use).

Faults belong to the engine, correctness to the unit. ``execute(unit)`` must be idempotent: it
skips a finished unit, resumes an interrupted one from its own checkpoints, writes only inside
its own directories and holds its run lock, so a unit retried after its worker died, or re-run
by a restarted coordinator, continues where it stopped and two claimants never both write.

Retries. Ray: ``ray.max_retries`` re-runs a unit whose worker process or node died; with
``ray.retry_exceptions`` (default on) a unit that raised is retried too, from the same budget:
on a cluster most exceptions are infrastructure (a preempted host, a storage error, a TPU
runtime fault), a retry of an idempotent unit costs only the restart, and a deterministic bug
fails ``max_retries + 1`` times quickly at the same place. SLURM: a job that failed (any cause)
is resubmitted up to ``slurm.max_retries`` times; a job that reaches its time limit or is
preempted is requeued by submitit itself (the unit is checkpointable: it resumes).

Ray and submitit are imported only when their engine is used: ``pip install .[cluster]``.
"""

from __future__ import annotations

import collections
import os
import pickle
import re
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import ml_collections

from anytime import config as config_lib

ENGINES = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local")


class Unit(Protocol):
  """What an executor needs of a unit: a name and the resources one execution of it takes."""

  key: str  # unique, filesystem-safe: names jobs, tasks and log files
  resources: Mapping[str, float]  # {"CPU": n} | {"GPU": n} | {"TPU": chips[, "TPU-v4-16-head": 1]}


class UnitsFailed(RuntimeError):
  """Units that still failed after the engine's retries (their keys and where their logs are)."""

  def __init__(self, failures: Mapping[str, str], logs: str):
    self.failures = dict(failures)
    self.logs = logs
    keys = sorted(failures)
    super().__init__(f"{len(keys)} unit(s) failed after retries: {', '.join(keys)}; logs: {logs}; "
                     f"first error ({keys[0]}): {_error_line(failures[keys[0]])}")


def _error_line(text: str) -> str:
  """The exception line of a traceback (its last ``SomeError: ...`` line), else its last line."""
  lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
  for line in reversed(lines):
    if re.match(r"^[\w.]*(Error|Exception|Interrupt|Exit)\b", line):
      return line
  return lines[-1] if lines else "?"


def default_executor_config() -> ml_collections.ConfigDict:
  """``suite.executor`` with its defaults (the schema lives in ``anytime.config``)."""
  return config_lib.default_executor()


def validate_executor_config(cfg: ml_collections.ConfigDict) -> None:
  """Refuses a bad ``suite.executor`` with a one-line ValueError naming the key."""
  if cfg.name not in ENGINES:
    raise ValueError(f"suite.executor.name: {cfg.name!r} is not an engine; accepted: "
                     f"{list(ENGINES)}")
  r, s = cfg.ray, cfg.slurm

  def check(key: str, value: Any, ok: bool, accepted: str) -> None:
    if not ok:
      raise ValueError(f"suite.executor.{key}: got {value!r}; accepted: {accepted}")

  def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)

  def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)

  check("ray.address", r.address, isinstance(r.address, str), 'a string ("", "auto", HOST:PORT)')
  check("ray.num_cpus", r.num_cpus, is_int(r.num_cpus) and r.num_cpus >= 0, "an integer >= 0")
  check("ray.num_cpus_per_unit", r.num_cpus_per_unit,
        is_num(r.num_cpus_per_unit) and r.num_cpus_per_unit >= 0, "a number >= 0")
  check("ray.max_retries", r.max_retries, is_int(r.max_retries) and r.max_retries >= 0,
        "an integer >= 0")
  check("ray.retry_exceptions", r.retry_exceptions, isinstance(r.retry_exceptions, bool),
        "True or False")
  check("slurm.cluster", s.cluster, s.cluster in SLURM_CLUSTERS, str(list(SLURM_CLUSTERS)))
  for key in ("folder", "partition", "account"):
    check(f"slurm.{key}", s[key], isinstance(s[key], str), "a string")
  if s.folder.startswith("gs://"):
    raise ValueError(f"suite.executor.slurm.folder: {s.folder!r} is on GCS; accepted: a path on "
                     "a file system the SLURM nodes share")
  for key, low in (("gpus_per_node", 0), ("cpus_per_task", 1), ("timeout_min", 1),
                   ("array_parallelism", 1), ("max_retries", 0)):
    check(f"slurm.{key}", s[key], is_int(s[key]) and s[key] >= low, f"an integer >= {low}")
  check("slurm.mem_gb", s.mem_gb, is_num(s.mem_gb) and s.mem_gb >= 0, "a number >= 0")
  check("slurm.poll_s", s.poll_s, is_num(s.poll_s) and s.poll_s > 0, "a number > 0")
  check("slurm.setup", list(s.setup), all(isinstance(x, str) for x in s.setup),
        "a list of shell lines (strings)")


def _check_units(units: Sequence[Unit]) -> None:
  keys = [u.key for u in units]
  repeated = sorted(k for k, n in collections.Counter(keys).items() if n > 1)
  if repeated:
    raise ValueError(f"unit keys must be unique; repeated: {repeated}")
  for u in units:
    if not u.key or any(c in u.key for c in "/\\ \n\t") or u.key.startswith("."):
      raise ValueError(f"unit key {u.key!r} is not filesystem-safe (no '/', spaces, leading '.')")
    bad = {k: v for k, v in u.resources.items() if not isinstance(v, (int, float)) or v < 0}
    if bad:
      raise ValueError(f"unit {u.key}: resources must be numbers >= 0, got {bad}")


def run_units(units: Sequence[Unit], execute: Callable[[Unit], None], *,
              config: ml_collections.ConfigDict, env: Mapping[str, str] | None = None,
              log: Callable[[str], None] = print, workdir: str = "") -> None:
  """Runs ``execute(unit)`` for every unit on the engine ``config.name``; blocks until all ran.

  ``execute`` must be importable by reference (a module-level function) and idempotent (see
  the module docstring). ``env`` is set in each worker process before it imports anything of
  ours (Ray: ``runtime_env`` env_vars; SLURM: ``export`` lines of the job script; local: this
  process, for the length of the call). ``workdir`` places SLURM's folder when
  ``slurm.folder`` is empty. Raises ``UnitsFailed`` naming the units that failed after the
  engine's retries and where their logs are; the other units have run.
  """
  validate_executor_config(config)
  _check_units(units)
  env = {str(k): str(v) for k, v in (env or {}).items()}
  if not units:
    return
  if config.name != "local":
    for what, module in (("execute", getattr(execute, "__module__", None)),
                         ("the unit type", type(units[0]).__module__)):
      if module in (None, "__main__"):
        raise ValueError(f"{what} must live in an importable module, not {module!r}: workers "
                         "import it by reference")
  engine = {"local": _run_local, "ray": _run_ray, "slurm": _run_slurm}[config.name]
  start = time.perf_counter()
  engine(list(units), execute, config, env, log, workdir)
  log(f"executor {config.name}: {len(units)} unit(s) done in {time.perf_counter() - start:.1f}s")


def describe(units: Sequence[Unit], config: ml_collections.ConfigDict, workdir: str = "") -> str:
  """What ``run_units`` would submit, for ``--dry-run``: engine, unit count, resources, layout."""
  validate_executor_config(config)
  _check_units(units)
  groups = _groups(units)
  lines = []
  if config.name == "local":
    lines.append(f"executor local: {len(units)} unit(s) in this process, one after the other")
    for resources, members in groups.items():
      lines.append(f"  {len(members)} x {_fmt(dict(resources))}  e.g. {members[0].key}")
  elif config.name == "ray":
    r = config.ray
    where = f"the Ray cluster at {r.address}" if r.address else (
        f"a local Ray cluster ({r.num_cpus or os.cpu_count()} CPUs)")
    retry = ("worker deaths and exceptions" if r.retry_exceptions else "worker deaths only")
    lines.append(f"executor ray: {len(units)} task(s) on {where}; max_retries={r.max_retries} "
                 f"({retry})")
    for resources, members in groups.items():
      lines.append(f"  {len(members)} task(s), each {_describe_ray_resources(members[0], r)}"
                   f"  e.g. {members[0].key}")
  else:
    s = config.slurm
    lines.append(f"executor slurm ({'submitit local executor' if s.cluster == 'local' else 'sbatch'}"
                 f"): {len(units)} job(s) in {len(groups)} array(s); folder "
                 f"{_slurm_folder(config, workdir)}; partition {s.partition or '(default)'}; "
                 f"time {s.timeout_min} min; resubmits up to {s.max_retries}")
    for resources, members in groups.items():
      p = _slurm_resources(members[0], s)
      lines.append(f"  array of {len(members)} (at most {min(len(members), s.array_parallelism)} "
                   f"at once): gpus_per_node={p['gpus_per_node']} cpus_per_task="
                   f"{p['cpus_per_task']}  e.g. {members[0].key}")
    if s.setup:
      lines.append(f"  setup: {'; '.join(s.setup)}")
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# What runs in a worker.


def _run_in_worker(execute: Callable[[Unit], None], unit_bytes: bytes,
                   env: Mapping[str, str]) -> str:
  """One unit in a worker process; the unit is unpickled only after ``env`` is in place."""
  os.environ.update(env)
  unit = pickle.loads(unit_bytes)
  execute(unit)
  return unit.key


class _SubmititUnit:
  """A submitit job: one unit. Checkpointable: on a time limit or preemption submitit calls
  ``checkpoint`` and requeues the job, which resumes from the unit's own checkpoints."""

  def __init__(self, execute: Callable[[Unit], None], unit_bytes: bytes, key: str,
               env: Mapping[str, str]):
    self.execute, self.unit_bytes, self.key, self.env = execute, unit_bytes, key, dict(env)

  def __call__(self) -> str:
    return _run_in_worker(self.execute, self.unit_bytes, self.env)

  def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
    import submitit  # pylint: disable=import-outside-toplevel
    return submitit.helpers.DelayedSubmission(self)


def _pickled(unit: Unit) -> bytes:
  try:
    return pickle.dumps(unit)
  except Exception as e:  # noqa: BLE001 - the error names the unit
    raise ValueError(f"unit {unit.key} cannot be pickled for a worker: {e}") from e


# ------------------------------------------------------------------------------------------
# local


def _run_local(units, execute, config, env, log, workdir):
  del config, workdir
  if "jax" in sys.modules:
    late = sorted(k for k, v in env.items() if os.environ.get(k) != v)
    if late:
      log(f"executor local: jax is already imported in this process; {late} take effect only "
          "for what reads them later (set them before starting the suite)")
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  try:
    for i, unit in enumerate(units):
      log(f"executor local: unit {i + 1}/{len(units)} {unit.key}")
      execute(unit)
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


# ------------------------------------------------------------------------------------------
# ray


def _head_resource(unit: Unit) -> str | None:
  heads = [k for k in unit.resources if k.startswith("TPU-") and k.endswith("-head")]
  if len(heads) > 1:
    raise ValueError(f"unit {unit.key}: one TPU slice head resource at most, got {heads}")
  return heads[0] if heads else None


def _ray_options(unit: Unit, r: ml_collections.ConfigDict) -> dict[str, Any]:
  res = dict(unit.resources)
  options = dict(num_cpus=float(res.pop("CPU", r.num_cpus_per_unit)),
                 num_gpus=float(res.pop("GPU", 0)))
  if res:
    options["resources"] = {k: float(v) for k, v in res.items()}
  return options


def _describe_ray_resources(unit: Unit, r: ml_collections.ConfigDict) -> str:
  head = _head_resource(unit)
  if head:
    chips = unit.resources.get("TPU", 0)
    return (f"a TPU slice: a launcher on {head} then one task per host of that slice with "
            f"TPU={chips:g}")
  return _fmt(_ray_options(unit, r))


def _run_on_slice(execute, unit_bytes, env, chips_per_host, key):
  """Runs on the head host of a multi-host TPU slice: one task per host of this slice (Marin's
  pattern: the head resource picks a free slice, the pod-name resource pins to its hosts)."""
  import ray  # pylint: disable=import-outside-toplevel
  from ray.util import tpu  # pylint: disable=import-outside-toplevel
  pod, hosts = tpu.get_current_pod_name(), tpu.get_current_pod_worker_count()
  task = ray.remote(_run_in_worker).options(
      num_cpus=0, resources={pod: 1, "TPU": chips_per_host}, max_retries=0,
      runtime_env={"env_vars": dict(env)}, name=f"{key}-host")
  refs = [task.remote(execute, unit_bytes, env) for _ in range(hosts)]
  try:
    ray.get(refs)
  except BaseException:
    for ref in refs:  # one host failed: stop the others before the whole slice is retried
      ray.cancel(ref, force=True)
    raise
  return key


def _run_ray(units, execute, config, env, log, workdir):
  del workdir
  import ray  # pylint: disable=import-outside-toplevel
  r = config.ray
  started = not ray.is_initialized()
  if started:
    if r.address:
      ray.init(address=r.address, log_to_driver=True)
    else:
      ray.init(num_cpus=r.num_cpus or None, include_dashboard=False, log_to_driver=True)
  try:
    runtime_env = {"env_vars": dict(env)} if env else None
    one = ray.remote(_run_in_worker)
    slice_launcher = ray.remote(_run_on_slice)
    refs = {}
    for unit in units:
      retry = dict(max_retries=r.max_retries, retry_exceptions=r.retry_exceptions,
                   name=unit.key)
      if runtime_env:
        retry["runtime_env"] = runtime_env
      head = _head_resource(unit)
      if head:
        ref = slice_launcher.options(num_cpus=0, resources={head: 1}, **retry).remote(
            execute, _pickled(unit), env, float(unit.resources.get("TPU", 0)), unit.key)
      else:
        ref = one.options(**_ray_options(unit, r), **retry).remote(
            execute, _pickled(unit), env)
      refs[ref] = unit.key
    log(f"executor ray: {len(refs)} task(s) submitted")
    failures, pending, done = {}, list(refs), 0
    while pending:
      ready, pending = ray.wait(pending, num_returns=1)
      for ref in ready:
        key = refs[ref]
        try:
          ray.get(ref)
          done += 1
          log(f"executor ray: {key} done ({done}/{len(refs)})")
        except Exception as e:  # noqa: BLE001 - collected, raised together below
          failures[key] = f"{type(e).__name__}: {e}"
          log(f"executor ray: {key} failed after {r.max_retries} retries: {type(e).__name__}")
    if failures:
      raise UnitsFailed(failures, _ray_logs())
  finally:
    if started:
      ray.shutdown()


def _ray_logs() -> str:
  try:
    import ray  # pylint: disable=import-outside-toplevel
    node = ray._private.worker.global_worker.node  # pylint: disable=protected-access
    where = f"{node.get_logs_dir_path()} (this node)"
  except Exception:  # noqa: BLE001 - a remote cluster: logs live on its nodes
    where = "/tmp/ray/session_latest/logs on each node"
  return f"{where}; `ray logs` / the dashboard, tasks named by unit key"


# ------------------------------------------------------------------------------------------
# slurm (submitit)


def _slurm_folder(config, workdir: str) -> str:
  if config.slurm.folder:
    return config.slurm.folder
  if workdir.startswith("gs://"):
    raise ValueError("suite.executor.slurm.folder: required when the workdir is on GCS "
                     f"({workdir}); accepted: a path on a file system the SLURM nodes share")
  return os.path.join(os.path.abspath(workdir or "."), "executor", "slurm")


def _slurm_resources(unit: Unit, s: ml_collections.ConfigDict) -> dict[str, int]:
  return dict(gpus_per_node=int(unit.resources.get("GPU", s.gpus_per_node)),
              cpus_per_task=int(max(1, unit.resources.get("CPU", s.cpus_per_task))))


def _slurm_executor(config, folder, resources, env, name):
  import submitit  # pylint: disable=import-outside-toplevel
  s = config.slurm
  setup = list(s.setup) + [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
  executor = submitit.AutoExecutor(folder=folder, cluster=s.cluster)
  params = dict(name=name, timeout_min=s.timeout_min, **resources)
  if s.mem_gb:
    params["mem_gb"] = s.mem_gb
  if s.cluster == "slurm":
    params.update(slurm_setup=setup, slurm_array_parallelism=s.array_parallelism)
    if s.partition:
      params["slurm_partition"] = s.partition
    if s.account:
      params["slurm_account"] = s.account
  else:
    params.update(local_setup=setup)
  executor.update_parameters(**params)
  return executor


def _run_slurm(units, execute, config, env, log, workdir):
  import submitit  # pylint: disable=import-outside-toplevel
  s = config.slurm
  folder = _slurm_folder(config, workdir)
  jobs_folder = os.path.join(folder, "%j")
  blobs = {u.key: _pickled(u) for u in units}
  todo, failures = list(units), {}
  for attempt in range(s.max_retries + 1):
    failures = {}
    for resources, members in _groups(todo).items():
      executor = _slurm_executor(config, jobs_folder, _slurm_resources(members[0], s), env,
                                 name=f"anytime-{members[0].key}"[:64])
      # submitit's local executor starts every job at once: bound it to the array width.
      width = len(members) if s.cluster == "slurm" else s.array_parallelism
      for start in range(0, len(members), width):
        chunk = members[start:start + width]
        jobs = executor.submit_array(
            [_SubmititUnit(execute, blobs[u.key], u.key, env) for u in chunk])
        by_id = {job.job_id: u.key for job, u in zip(jobs, chunk)}
        if s.cluster == "local":  # no network file system here: no need to wait 15 s for
          for job in jobs:        # the result file of a job that died
            job._results_timeout_s = 1  # pylint: disable=protected-access
        log(f"executor slurm: attempt {attempt + 1}: {len(jobs)} job(s) submitted "
            f"({_fmt(dict(resources))}), e.g. job {jobs[0].job_id}")
        for job in submitit.helpers.as_completed(jobs, poll_frequency=s.poll_s):
          key = by_id[job.job_id]
          error = job.exception()
          if error is None:
            log(f"executor slurm: {key} done (job {job.job_id})")
          else:
            failures[key] = f"{type(error).__name__}: {error}"
            log(f"executor slurm: {key} failed (job {job.job_id}, logs {job.paths.stderr})")
    if not failures:
      return
    todo = [u for u in units if u.key in failures]
    if attempt < s.max_retries:
      log(f"executor slurm: resubmitting {sorted(failures)} ({attempt + 1}/{s.max_retries})")
  raise UnitsFailed(failures, f"{folder}/<job id>/ (*_log.err, *_log.out)")


# ------------------------------------------------------------------------------------------


def _groups(units: Sequence[Unit]) -> dict[tuple, list[Unit]]:
  """Units grouped by their resources, in order of first appearance."""
  groups: dict[tuple, list[Unit]] = {}
  for u in units:
    groups.setdefault(tuple(sorted(u.resources.items())), []).append(u)
  return groups


def _fmt(resources: Mapping[str, Any]) -> str:
  return "{" + ", ".join(f"{k}: {v:g}" if isinstance(v, (int, float)) else f"{k}: {v}"
                         for k, v in resources.items()) + "}"


__all__ = ["ENGINES", "Unit", "UnitsFailed", "default_executor_config", "describe", "run_units",
           "validate_executor_config"]
