"""Device mesh, logical-axis rules -> ``NamedSharding``, and multi-host helpers.

Parameters and activations carry logical axis names (``embed``, ``heads``, ``mlp``, ``vocab``,
``batch``, ``length``, ...). Rules held in the config map each name to a mesh axis (or a tuple
of mesh axes, or None = replicated); this module turns them into shardings. Sharding rules are
data in the config, not code branches.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
Rules = Sequence[tuple[str, Any]]

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
)


def mesh_shape(axis_sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves the sizes of (data, fsdp, tensor); one of them may be -1 (= the rest)."""
  sizes = [int(axis_sizes[name]) for name in MESH_AXES]
  free = [i for i, s in enumerate(sizes) if s == -1]
  if len(free) > 1:
    raise ValueError(f"parallel.mesh: at most one axis may be -1, got {dict(axis_sizes)}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"parallel.mesh: axis sizes must be positive or -1, got {dict(axis_sizes)}")
  known = math.prod(s for s in sizes if s != -1)
  if free:
    if num_devices % known:
      raise ValueError(
          f"parallel.mesh: {dict(axis_sizes)} does not divide the {num_devices} devices"
      )
    sizes[free[0]] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
        f"parallel.mesh: axis sizes {dict(zip(MESH_AXES, sizes))} multiply to "
        f"{math.prod(sizes)}, but there are {num_devices} devices"
    )
  return tuple(sizes)


def make_mesh(axis_sizes: Mapping[str, int], devices: Sequence[Any] | None = None):
  """A ``jax.sharding.Mesh`` over (data, fsdp, tensor) with Auto axis types."""
  devices = list(devices) if devices is not None else jax.devices()
  shape = mesh_shape(axis_sizes, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], rules: Rules,
                    shape: Sequence[int] | None = None, mesh=None) -> P:
  """PartitionSpec for logical axes; a mesh axis is used at most once; dims that the mesh
  axes do not divide (given ``shape`` and ``mesh``) stay replicated."""
  table = dict(rules)
  used: set[str] = set()
  spec = []
  for i, name in enumerate(logical_axes):
    target = table.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)
    if axes and shape is not None and mesh is not None:
      size = math.prod(mesh.shape[a] for a in axes)
      if shape[i] % size:
        axes = ()
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def tree_shardings(abstract_tree, logical_axes_tree, mesh, rules: Rules):
  """NamedShardings for a tree of arrays given a matching tree of logical-axis tuples."""

  def one(x, axes):
    axes = tuple(axes) if axes is not None else (None,) * len(x.shape)
    return NamedSharding(mesh, logical_to_spec(axes, rules, x.shape, mesh))

  return jax.tree.map(one, abstract_tree, logical_axes_tree,
                      is_leaf=lambda x: isinstance(x, tuple) or x is None)


def opt_state_shardings(tx: optax.GradientTransformation, abstract_opt_state, param_shardings,
                        mesh):
  """Shards every params-shaped part of the optimizer state (moments, averages) like the
  params; everything else (counts, scalars) is replicated. Extra leading dims (e.g. a window
  average's ring buffer) are replicated."""

  def like_param(leaf, sharding):
    extra = len(leaf.shape) - len(sharding.spec)
    return NamedSharding(mesh, P(*((None,) * extra), *sharding.spec)) if extra > 0 else sharding

  return optax.tree_map_params(
      tx, like_param, abstract_opt_state, param_shardings,
      transform_non_params=lambda _: NamedSharding(mesh, P()),
      is_leaf=lambda x: isinstance(x, NamedSharding),
  )


# ---------------------------------------------------------------- activation constraints

# The (mesh, rules) that ``constrain`` uses while tracing; None outside ``activation_rules``.
# A ContextVar, not a global: nested contexts and other threads each see their own.
_active_rules: contextvars.ContextVar[tuple[Any, tuple] | None] = contextvars.ContextVar(
    "anytime_activation_rules", default=None)


@contextlib.contextmanager
def activation_rules(mesh, rules: Rules) -> Iterator[None]:
  """While tracing inside this context, ``constrain`` shards activations by ``rules``."""
  token = _active_rules.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _active_rules.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """``with_sharding_constraint`` by logical axes; a no-op outside ``activation_rules``."""
  active = _active_rules.get()
  if active is None:
    return x
  mesh, rules = active
  spec = logical_to_spec(logical_axes, rules, x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


# ---------------------------------------------------------------- multi-host


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1) -> bool:
  """Calls ``jax.distributed.initialize`` when the config or the environment asks for it.

  Explicit arguments win; otherwise JAX's own cluster detection (TPU pods, SLURM, Open MPI,
  ``JAX_COORDINATOR_ADDRESS``) is used when one of its environment variables is present.
  Errors are never swallowed: a misconfigured cluster fails here, loudly.
  """
  if jax.distributed.is_initialized():
    return True
  if coordinator_address:
    if num_processes < 1 or process_id < 0:
      raise ValueError(
          "distributed.num_processes (>= 1) and distributed.process_id (>= 0) are required "
          "with distributed.coordinator_address"
      )
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  markers = ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
             "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")
  if any(os.environ.get(m) for m in markers):
    if os.environ.get("SLURM_NTASKS") == "1":
      return False
    jax.distributed.initialize()
    logging.info("jax.distributed initialized: process %d of %d", jax.process_index(),
                 jax.process_count())
    return True
  return False


def global_batch(local_batch: Mapping[str, np.ndarray], mesh, rules: Rules) -> dict[str, Any]:
  """Assembles each process's share of the batch into global arrays sharded over ``batch``."""
  out = {}
  for key, value in local_batch.items():
    spec = logical_to_spec(("batch",) + (None,) * (value.ndim - 1), rules)
    out[key] = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), value)
  return out


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def to_host(tree):
  """Fetches a (possibly sharded, multi-host) tree of arrays to numpy on every process."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, jax.device_get(tree))
  return multihost_utils.process_allgather(tree, tiled=True)


# XLA's CPU backend in jaxlib 0.10.2 miscompiles some of its YNNPACK ("__ynn_fusion") fusions:
# for ``1 + sum(p[None] * x, -1)`` with x f32[9, 4032, 64] the rows i >= 8 come out equal to
# rows i - 8 (tests/test_vmap_copies.py reproduces it). vmap over >= 9 copies of a function that
# multiplies them with a shared constant builds exactly that fusion. These compiler options
# turn the YNNPACK fusions off for one jitted function; other backends do not get them.
_CPU_SAFE_COMPILER_OPTIONS = (("xla_cpu_experimental_ynn_fusion_type", ""),)


def jit_cpu_safe(fn: Callable, **jit_kwargs) -> Callable:
  """``jax.jit(fn, **jit_kwargs)`` with the CPU compiler's workaround of ``jit_over_copies``."""
  options = dict(_CPU_SAFE_COMPILER_OPTIONS) if jax.default_backend() == "cpu" else None
  return jax.jit(fn, compiler_options=options, **jit_kwargs)


def jit_over_copies(fn: Callable, *, in_axes: Any = 0, **jit_kwargs) -> Callable:
  """``jax.jit(jax.vmap(fn, in_axes), **jit_kwargs)``, correct on CPU for any number of copies."""
  return jit_cpu_safe(jax.vmap(fn, in_axes=in_axes), **jit_kwargs)


@contextlib.contextmanager
def compile_log() -> Iterator[list[str]]:
  """The names of the programs XLA compiles inside the block, e.g. ``"jit(train_step)"``, read
  from JAX's compile log (a program loaded from the persistent cache counts too). JAX's own
  log lines are kept off the console while the block runs.

      with parallel.compile_log() as compiled:
        step(state, batch, lr)
      assert not any("train_step" in name for name in compiled)
  """
  names: list[str] = []
  prefix = "Finished XLA compilation of "

  class Handler(logging.Handler):

    def emit(self, record):
      message = record.getMessage()
      if message.startswith(prefix):
        names.append(message[len(prefix):].rsplit(" in ", 1)[0])

  handler, logger = Handler(level=logging.DEBUG), logging.getLogger("jax")
  propagate, logger.propagate = logger.propagate, False
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      yield names
  finally:
    logger.removeHandler(handler)
    logger.propagate = propagate


def use_compilation_cache(directory: str | None = None) -> str:
  """Turns on JAX's persistent compilation cache, before anything is compiled.

  Programs with the same HLO (the runs of a suite, a resumed run, a second invocation) are
  then compiled once and loaded from disk afterwards. The directory is ``directory``, else
  ``$ANYTIME_COMPILATION_CACHE``, else ``~/.cache/anytime/jax``. Returns the directory.
  """
  directory = (directory or os.environ.get("ANYTIME_COMPILATION_CACHE") or
               os.path.join(os.path.expanduser("~"), ".cache", "anytime", "jax"))
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return directory


def use_cpu_devices(count: int | None = None) -> None:
  """Exposes ``count`` CPU devices (default: one per core) so that independent work, e.g. the
  runs of a batched group, runs on every core. Only takes effect before JAX starts its
  backends, and never overrides a device count already set in ``XLA_FLAGS``."""
  flag = "--xla_force_host_platform_device_count"
  flags = os.environ.get("XLA_FLAGS", "")
  if flag not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {flag}={count or os.cpu_count() or 1}".strip()


def scan_steps(step_fn: Callable) -> Callable:
  """``k`` train steps as one program: ``fn(state, batches, lrs) -> (state, metrics)``.

  ``step_fn(state, batch, lr) -> (state, metrics)`` is one step (``loop.Run.step_fn``, or its
  vmapped form for a group); ``batches`` and ``lrs`` carry the ``k`` steps on a new leading
  axis (``batches["inputs"]``: ``[k, ...]`` of one step's batch; ``lrs``: ``[k, ...]``), and the
  metrics come back stacked the same way. ``k`` is read from ``lrs``: one compiled program per
  ``k``. Equal to ``k`` calls of ``step_fn``, bitwise on CPU (tests/test_parallel.py), so a
  loop that starts its k-step chunks at multiples of k resumes bitwise.
  Jit it with ``donate_argnums=0``; for a group of runs use ``jit_steps_over_copies`` (the run
  axis vmapped inside the scan: ``batches`` ``[k, runs, ...]``).
  """

  def steps(state, batches, lrs):
    def body(carry, xs):
      batch, lr = xs
      return step_fn(carry, batch, lr)

    return jax.lax.scan(body, state, (batches, lrs))

  return steps


def jit_steps_over_copies(step_fn: Callable, **jit_kwargs) -> Callable:
  """``scan_steps`` of ``step_fn`` vmapped over copies, jitted like ``jit_over_copies`` (its
  CPU workaround included): ``fn(states, batches, lrs)`` with ``batches`` ``[k, copies, ...]``
  and ``lrs`` ``[k, copies]``; metrics come back ``[k, copies]``."""
  return jit_cpu_safe(scan_steps(jax.vmap(step_fn)), **jit_kwargs)
