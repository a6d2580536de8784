"""Post-hoc weight averages: reconstruct any power EMA after training from periodic snapshots.

Karras et al. 2024 (EDM2, "Analyzing and Improving the Training Dynamics of Diffusion Models",
Sec. 3 and App. C.2): keep two power-function EMAs (``averaging.power_ema``) during training,
save both every ``snapshot_every`` steps, and after training express the averaging profile of
*any* target average as a least-squares combination of the stored profiles. The same linear
combination of the stored parameters is the reconstructed average.

    tracking = posthoc.default_tracking()            # {"pema_050": ..., "pema_100": ...}
    tx = averaging.with_averages(optax.adamw(...), averages={**tracking, ...})
    writer = posthoc.SnapshotWriter(workdir + "/main/snapshots", tracking, keep=0)
    ...  # every snapshot_every steps:
    writer.save(step, posthoc.tracked_averages(opt_state, tracking, params))
    writer.close()
    params, fit_error = posthoc.reconstruct(workdir + "/main/snapshots", target_step=step,
                                            sigma_rel=0.07)

Profiles are the exact *discrete* ones of ``anytime.averaging`` (not EDM2's continuous
approximation): after t updates a power EMA with exponent γ weighs iterate s by
p_t(s) = (s^(γ+1) − (s−1)^(γ+1)) / t^(γ+1), and the anytime EMA with factor f by
(1 − 2^(−f/(s+1))) Π_{j=s+1..t} 2^(−f/(j+1)). Both are q(s) / Σ_{s'≤t} q(s') for a fixed
per-kind sequence q, so every inner product Σ_s p_1(s) p_2(s) is a difference of two entries of
one cumulative sum per pair of kinds: O(last step) once, then O(1) per pair of profiles, with
no approximation (the continuous form is off by O(1/t) at the first snapshots). Sums are kept
in log space, so large exponents and factors do not overflow.

Weights are constrained to sum to one, so a parameter that never changes is reconstructed
exactly. ``fit_error`` is the relative L2 error ‖Σ c_i p_i − p*‖ / ‖p*‖ of the reconstructed
profile against the target profile p*, over training steps.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from anytime._requires import require_train_extra

require_train_extra(__name__, "orbax.checkpoint")

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from anytime import averaging

__all__ = ["default_tracking", "tracked_averages", "profile", "solve_weights", "SnapshotWriter",
           "list_snapshots", "load_snapshot", "reconstruct"]

PROFILES_ITEM = "profiles"  # the JSON item of every snapshot step; not allowed as an average name
FORMAT_VERSION = 1
TRACKABLE_KINDS = ("power_ema", "anytime_ema")


# --------------------------------------------------------------------------- tracking


def default_tracking(
    sigma_rels: Sequence[float] = (0.05, 0.10), *, dtype: Any = jnp.float32
) -> dict[str, averaging.Average]:
  """Power EMAs to track for post-hoc reconstruction, EDM2's default σ_rel 0.05 and 0.10.

  Names are ``pema_<1000·σ_rel, 3 digits>``: ``"pema_050"``, ``"pema_100"`` (letters, digits
  and ``_`` only, so they are valid directory names, metric keys and ConfigDict keys).
  """
  if isinstance(sigma_rels, (str, bytes)) or not isinstance(sigma_rels, Sequence) or not sigma_rels:
    raise ValueError(f"sigma_rels must be a non-empty sequence of floats in (0, 0.28), "
                     f"got {sigma_rels!r}")
  out = {}
  for sigma_rel in sigma_rels:
    name = f"pema_{round(1000 * float(sigma_rel)):03d}"
    if name in out:
      raise ValueError(f"sigma_rels must differ by at least 0.001, got {tuple(sigma_rels)}")
    out[name] = averaging.power_ema(sigma_rel=float(sigma_rel), dtype=dtype)
  return out


def tracked_averages(opt_state: optax.OptState, tracking: Mapping[str, averaging.Average],
                     params: Any = None):
  """``{name: averaged params}`` for every tracked average, read from ``opt_state``.

  ``params``: the current params. Required when the state comes from
  ``with_averages(fold="applied")`` (the default), whose last iterate is folded in from them;
  float leaves are read in the tracked average's dtype either way (not the params' dtype).
  """
  if params is None:
    return {name: averaging.averaged_params(opt_state, name) for name in tracking}

  def like(spec):
    return jax.tree.map(
        lambda p: p.astype(spec.dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params)

  return {name: averaging.averaged_params(opt_state, name, like=like(spec))
          for name, spec in tracking.items()}


# --------------------------------------------------------------------------- profiles


@dataclasses.dataclass(frozen=True)
class _Kind:
  """A per-step weight sequence q(s), s = 1, 2, ...: an average's profile is q / Σ q.

  The sequence comes from the average itself (``Average.log_profile_terms``), shifted by its
  ``start_step`` (q(s) = 0 for s <= start_step).
  """

  average: averaging.Average

  @property
  def offset(self) -> int:
    return self.average.start_step

  def log_weights(self, n: int) -> np.ndarray:
    """log q(s) for s = 1..n, float64 [n]."""
    out = np.full(n, -np.inf)
    if n > self.offset:
      out[self.offset:] = self.average.log_profile_terms(n - self.offset)
    return out


def _kind_of(spec: averaging.Average) -> _Kind:
  if spec.kind not in TRACKABLE_KINDS:
    raise ValueError(f"tracking: kind must be one of {TRACKABLE_KINDS}, got {spec.kind!r}")
  if spec.every != 1:
    raise ValueError(f"tracking: every must be 1 for post-hoc averages, got {spec.every}")
  # The profile does not depend on the stored dtype: one _Kind per (kind, value, start).
  return _Kind(dataclasses.replace(spec, dtype=jnp.float32))


def _cumulative_log_sums(log_w: np.ndarray) -> np.ndarray:
  """C[m] = log Σ_{s<=m} exp(log_w[s−1]) for m = 0..n, float64 [n + 1]."""
  return np.concatenate([[-np.inf], np.logaddexp.accumulate(log_w)])


def _log_range(cumulative: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
  """log Σ_{lo < s <= hi} from cumulative log sums; −inf for empty ranges."""
  lo, hi = np.broadcast_arrays(np.asarray(lo), np.asarray(hi))
  upper, lower = cumulative[np.maximum(hi, lo)], cumulative[np.minimum(lo, hi)]
  with np.errstate(divide="ignore", invalid="ignore"):
    out = upper + np.log(-np.expm1(lower - upper))
  out = np.where(np.isneginf(lower), upper, out)
  return np.where((hi > lo) & np.isfinite(upper), out, -np.inf)


@dataclasses.dataclass(frozen=True)
class _Profile:
  """The weights q_kind(s) · 1[start < s <= end] / Σ over the same range."""

  kind: _Kind
  start: int
  end: int


class _InnerProducts:
  """Exact Σ_s p(s) p'(s) for discrete profiles, via one cumulative sum per pair of kinds."""

  def __init__(self, kinds: Sequence[_Kind], n: int):
    self._log_w = {kind: kind.log_weights(n) for kind in set(kinds)}
    self._cumulative: dict[tuple[_Kind, _Kind | None], np.ndarray] = {}

  def _sums(self, a: _Kind, b: _Kind | None = None) -> np.ndarray:
    """Cumulative log sums of q_a (b None) or of q_a · q_b."""
    key = (a, b) if b is None or repr(a) <= repr(b) else (b, a)
    if key not in self._cumulative:
      log_w = self._log_w[a] if b is None else self._log_w[a] + self._log_w[b]
      self._cumulative[key] = _cumulative_log_sums(log_w)
    return self._cumulative[key]

  def log_norms(self, profiles: Sequence[_Profile]) -> np.ndarray:
    """log Σ_s q(s) over each profile's range (its normaliser), [len(profiles)]."""
    return np.array([
        _log_range(self._sums(p.kind), p.start, p.end) for p in profiles
    ], dtype=np.float64).reshape(len(profiles))

  def matrix(self, left: Sequence[_Profile], right: Sequence[_Profile]) -> np.ndarray:
    """[len(left), len(right)] matrix of inner products of normalised profiles."""
    out = np.zeros((len(left), len(right)))
    log_z_left, log_z_right = self.log_norms(left), self.log_norms(right)
    kinds_left = sorted({p.kind for p in left}, key=repr)
    kinds_right = sorted({p.kind for p in right}, key=repr)
    for ka in kinds_left:
      rows = np.array([i for i, p in enumerate(left) if p.kind == ka])
      for kb in kinds_right:
        cols = np.array([j for j, p in enumerate(right) if p.kind == kb])
        lo = np.maximum.outer([left[i].start for i in rows], [right[j].start for j in cols])
        hi = np.minimum.outer([left[i].end for i in rows], [right[j].end for j in cols])
        log_dot = _log_range(self._sums(ka, kb), lo, hi)
        log_dot = log_dot - log_z_left[rows][:, None] - log_z_right[cols][None, :]
        out[np.ix_(rows, cols)] = np.exp(log_dot)
    return out


def _check_int(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _target_kind(gamma, sigma_rel, anytime_factor) -> _Kind:
  given = [x is not None for x in (gamma, sigma_rel, anytime_factor)]
  if sum(given) != 1:
    raise ValueError("give exactly one of gamma, sigma_rel or anytime_factor")
  if sigma_rel is not None:
    gamma = averaging.sigma_rel_to_gamma(sigma_rel)  # validates the range
  if gamma is not None:
    if not isinstance(gamma, (int, float, np.floating)) or not (-1 < gamma < math.inf):
      raise ValueError(f"gamma must be a finite number > -1, got {gamma!r}")
    return _Kind(averaging.PowerEma(gamma=float(gamma)))
  if not isinstance(anytime_factor, (int, float, np.floating)) or not (
      0 < anytime_factor < math.inf):
    raise ValueError(f"anytime_factor must be a positive finite number, got {anytime_factor!r}")
  return _Kind(averaging.AnytimeEma(factor=float(anytime_factor)))


def profile(
    target_step: int,
    *,
    gamma: float | None = None,
    sigma_rel: float | None = None,
    anytime_factor: float | None = None,
    tail_start: int = 0,
) -> np.ndarray:
  """The exact weights over iterates 1..target_step of one average, float64 [target_step].

  ``gamma``/``sigma_rel``: ``averaging.power_ema``; ``anytime_factor``: ``averaging.anytime_ema``;
  ``tail_start`` > 0 keeps only iterates after it, renormalised (γ = 0: the uniform tail average).
  """
  kind = _target_kind(gamma, sigma_rel, anytime_factor)
  target_step = _check_int("target_step", target_step, 1)
  tail_start = _check_int("tail_start", tail_start, 0)
  if tail_start >= target_step:
    raise ValueError(f"tail_start must be in [0, target_step={target_step}), got {tail_start}")
  log_w = kind.log_weights(target_step)
  log_w[:tail_start] = -np.inf
  return np.exp(log_w - np.logaddexp.reduce(log_w))


# --------------------------------------------------------------------------- least squares


def _solve(basis: Sequence[_Profile], target: _Profile,
           regularization: float) -> tuple[np.ndarray, float]:
  n = max([p.end for p in basis] + [target.end])
  products = _InnerProducts([p.kind for p in basis] + [target.kind], n)
  target_norm2 = float(products.matrix([target], [target])[0, 0])
  gram = products.matrix(basis, basis) / target_norm2
  rhs = products.matrix(basis, [target])[:, 0] / target_norm2
  # Minimise ‖Σ c_i p_i − p*‖² subject to Σ c_i = 1 by eliminating the last weight:
  # c = e_last + D z with D = [I; −1ᵀ], so DᵀGD z = Dᵀ(b − G e_last), plus a small ridge.
  last = len(basis) - 1
  weights = np.zeros(len(basis))
  weights[last] = 1.0
  if last:
    g, g_last, g_ll = gram[:last, :last], gram[:last, last], gram[last, last]
    a = g - g_last[:, None] - g_last[None, :] + g_ll
    b = (rhs[:last] - rhs[last]) - (g_last - g_ll)
    a[np.diag_indices(last)] += regularization * max(np.trace(a) / last, 1e-300)
    z = np.linalg.solve(a, b)
    weights[:last] = z
    weights[last] = 1.0 - z.sum()
  error2 = weights @ gram @ weights - 2.0 * weights @ rhs + 1.0
  return weights, float(math.sqrt(max(error2, 0.0)))


def _snapshot_basis(
    snapshot_steps: Sequence[int], kinds: Sequence[_Kind], target_step: int
) -> tuple[list[tuple[int, int]], list[_Profile]]:
  """The usable (snapshot index, profile index) pairs and their profiles."""
  usable, profiles = [], []
  for i, step in enumerate(snapshot_steps):
    for j, kind in enumerate(kinds):
      # A snapshot after the target would use the future; one at or before the average's start
      # holds the raw params, not an average.
      if kind.offset < step <= target_step:
        usable.append((i, j))
        profiles.append(_Profile(kind, kind.offset, step))
  return usable, profiles


def solve_weights(
    snapshot_steps: Sequence[int],
    profile_gammas: Sequence[float],
    *,
    target_step: int,
    gamma: float | None = None,
    sigma_rel: float | None = None,
    anytime_factor: float | None = None,
    tail_start: int = 0,
    profile_start_steps: Sequence[int] | None = None,
    regularization: float = 1e-10,
) -> tuple[np.ndarray, float]:
  """Least-squares weights over stored power-EMA snapshots for a target average (EDM2 App. C.2).

  Args:
    snapshot_steps: the steps at which snapshots were saved (increasing).
    profile_gammas: γ of each tracked power EMA (``averaging.power_ema``), all > 0.
    target_step: the step t of the target average; only snapshots at steps <= t are used.
    gamma / sigma_rel / anytime_factor: exactly one: the target power EMA (γ > −1; γ = 0 is a
      uniform average) or the target anytime EMA 2^(−f/(t+1)).
    tail_start: the target keeps only iterates after this step (renormalised).
    profile_start_steps: ``start_step`` of each tracked average (default all 0).
    regularization: ridge added to the Gram matrix, relative to its mean diagonal; it bounds
      the weights' size (and so float32 rounding) where profiles are nearly collinear.

  Returns:
    ``(weights [num_snapshots, num_profiles], fit_error)``: weights sum to one (zero for unused
    snapshots); ``fit_error`` is ‖Σ w p − p*‖₂ / ‖p*‖₂ over the exact discrete profiles.
  """
  steps = [_check_int("snapshot_steps[]", s, 1) for s in snapshot_steps]
  if not steps or any(b <= a for a, b in zip(steps, steps[1:])):
    raise ValueError(f"snapshot_steps must be a non-empty increasing sequence of integers >= 1, "
                     f"got {list(snapshot_steps)}")
  gammas = list(profile_gammas)
  if not gammas or not all(isinstance(g, (int, float, np.floating)) and 0 < g < math.inf
                           for g in gammas):
    raise ValueError(f"profile_gammas must be a non-empty sequence of finite numbers > 0, "
                     f"got {gammas}")
  starts = [0] * len(gammas) if profile_start_steps is None else list(profile_start_steps)
  if len(starts) != len(gammas):
    raise ValueError(f"profile_start_steps must have one entry per profile ({len(gammas)}), "
                     f"got {len(starts)}")
  starts = [_check_int("profile_start_steps[]", s, 0) for s in starts]
  kinds = [_Kind(averaging.PowerEma(gamma=float(g), start_step=s)) for g, s in zip(gammas, starts)]
  return _solve_for_kinds(steps, kinds, target_step=target_step, gamma=gamma,
                          sigma_rel=sigma_rel, anytime_factor=anytime_factor,
                          tail_start=tail_start, regularization=regularization)


def _check_target(target_step, gamma, sigma_rel, anytime_factor, tail_start,
                  regularization) -> _Kind:
  kind = _target_kind(gamma, sigma_rel, anytime_factor)
  target_step = _check_int("target_step", target_step, 1)
  tail_start = _check_int("tail_start", tail_start, 0)
  if tail_start >= target_step:
    raise ValueError(f"tail_start must be in [0, target_step={target_step}), got {tail_start}")
  if not isinstance(regularization, (int, float)) or not 0 <= regularization < 1:
    raise ValueError(f"regularization must be in [0, 1), got {regularization!r}")
  return kind


def _solve_for_kinds(steps, kinds, *, target_step, gamma, sigma_rel, anytime_factor,
                     tail_start, regularization) -> tuple[np.ndarray, float]:
  target_kind = _check_target(target_step, gamma, sigma_rel, anytime_factor, tail_start,
                              regularization)
  usable, basis = _snapshot_basis(steps, kinds, target_step)
  if not basis:
    raise ValueError(f"target_step must be >= the first usable snapshot step "
                     f"(snapshots at {steps[0]}..{steps[-1]}), got {target_step}")
  weights, fit_error = _solve(basis, _Profile(target_kind, tail_start, target_step),
                              regularization)
  out = np.zeros((len(steps), len(kinds)))
  for (i, j), w in zip(usable, weights):
    out[i, j] = w
  return out, fit_error


# --------------------------------------------------------------------------- snapshots


def _manager(directory: str, names: Sequence[str], *, keep: int = 0,
             create: bool = False) -> ocp.CheckpointManager:
  handlers = {name: ocp.StandardCheckpointHandler() for name in names}
  handlers[PROFILES_ITEM] = ocp.JsonCheckpointHandler()
  options = ocp.CheckpointManagerOptions(
      create=create,
      preservation_policy=checkpoint_managers.LatestN(keep) if keep else None,
  )
  return ocp.CheckpointManager(os.path.abspath(directory), item_handlers=handlers,
                               options=options)


def _spec_json(spec: averaging.Average) -> dict[str, Any]:
  _kind_of(spec)
  return spec.to_config()  # {"kind", "gamma" | "factor", "start_step", "every", "dtype"}


class SnapshotWriter:
  """Saves the tracked averages every few steps through Orbax, one step directory each.

  Layout: ``<directory>/<step>/<name>/`` (Orbax StandardSave of the average's params tree) and
  ``<directory>/<step>/profiles/`` (JSON: the averages' kinds and γ / factor), so a directory is
  self-describing. Saves are asynchronous; ``keep`` > 0 keeps only the latest ``keep`` steps
  (0 keeps all: reconstruction is best with every snapshot). Call ``save`` on every process.
  """

  def __init__(self, directory: str, tracking: Mapping[str, averaging.Average], keep: int = 0):
    if not isinstance(directory, (str, os.PathLike)) or not str(directory):
      raise ValueError(f"directory must be a non-empty path, got {directory!r}")
    if not isinstance(tracking, Mapping) or not tracking:
      raise ValueError("tracking must be a non-empty mapping of name -> averaging.Average")
    for name, spec in tracking.items():
      if not isinstance(name, str) or not name or name == PROFILES_ITEM or not all(
          c.isalnum() or c in "_-." for c in name):
        raise ValueError(f"tracking: names must be non-empty, use [A-Za-z0-9_.-] and differ "
                         f"from {PROFILES_ITEM!r}, got {name!r}")
      if not isinstance(spec, averaging.Average):
        raise ValueError(f"tracking[{name!r}] must be an averaging.Average, "
                         f"got {type(spec).__name__}")
      _kind_of(spec)
    self.keep = _check_int("keep", keep, 0)
    self.directory = str(directory)
    self.tracking = dict(tracking)
    self._profiles = {name: _spec_json(spec) for name, spec in self.tracking.items()}
    self._manager = _manager(self.directory, list(self.tracking), keep=self.keep, create=True)

  @property
  def names(self) -> list[str]:
    return list(self.tracking)

  def save(self, step: int, averages: Mapping[str, Any]) -> None:
    """Starts saving ``{name: params tree}`` (exactly the tracked names) as snapshot ``step``."""
    step = _check_int("step", step, 1)
    if not isinstance(averages, Mapping) or set(averages) != set(self.tracking):
      got = sorted(averages) if isinstance(averages, Mapping) else type(averages).__name__
      raise ValueError(f"averages must map exactly the tracked names {sorted(self.tracking)}, "
                       f"got {got}")
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      raise ValueError(f"step must be > the latest snapshot step {latest}, got {step}")
    items = {name: ocp.args.StandardSave(averages[name]) for name in self.tracking}
    items[PROFILES_ITEM] = ocp.args.JsonSave(
        {"format": FORMAT_VERSION, "step": step, "profiles": self._profiles})
    self._manager.save(step, args=ocp.args.Composite(**items))

  def discard_after(self, step: int) -> list[int]:
    """Deletes the snapshots after ``step`` (call after resuming from a checkpoint at ``step``).

    Snapshots written after the restored checkpoint describe a trajectory that will be replayed,
    and ``save`` refuses steps that are not new. Returns the deleted steps.
    """
    step = _check_int("step", step, 0)
    self._manager.wait_until_finished()
    stale = [s for s in self._manager.all_steps() if s > step]
    for s in stale:
      self._manager.delete(s)
    self._manager.reload()
    return sorted(stale)

  def wait(self) -> None:
    """Blocks until every started save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> SnapshotWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def list_snapshots(directory: str) -> list[int]:
  """The steps of the finished snapshots in ``directory``, increasing ([] if none)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(s) for s in ocp.utils.checkpoint_steps(os.path.abspath(directory)))


def _read_profiles(directory: str, step: int,
                   manager: ocp.CheckpointManager | None = None) -> dict[str, dict[str, Any]]:
  """The ``profiles`` JSON of snapshot ``step``: {name: {"kind", "gamma" | "factor", ...}}."""
  own = manager is None
  manager = _manager(directory, []) if own else manager
  try:
    meta = manager.restore(step, args=ocp.args.Composite(
        **{PROFILES_ITEM: ocp.args.JsonRestore()}))[PROFILES_ITEM]
  finally:
    if own:
      manager.close()
  if meta.get("format") != FORMAT_VERSION:
    raise ValueError(f"snapshot {step} in {directory}: unsupported format {meta.get('format')}")
  return meta["profiles"]


def _abstract(like) -> Any:
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      like)


def load_snapshot(directory: str, step: int, name: str, like: Any = None):
  """One stored average: the params tree ``name`` of snapshot ``step``.

  ``like`` (a tree of arrays or ``jax.ShapeDtypeStruct`` with shardings) sets the structure,
  dtypes and shardings; without it, the leaves are restored on the first device.
  """
  steps = list_snapshots(directory)
  if step not in steps:
    raise ValueError(f"step must be one of the snapshots in {directory} {steps}, got {step!r}")
  names = list(_read_profiles(directory, step))
  if name not in names:
    raise ValueError(f"name must be one of {names}, got {name!r}")
  manager = _manager(directory, names)
  try:
    return _restore(manager, step, name, like)
  finally:
    manager.close()


def _tree(manager: ocp.CheckpointManager, step: int, name: str):
  """The stored tree metadata (shapes, dtypes) of one average."""
  metadata = manager.item_metadata(step)[name]
  return metadata.tree if hasattr(metadata, "tree") else metadata


def _restore(manager: ocp.CheckpointManager, step: int, name: str, like: Any):
  if like is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                            _tree(manager, step, name))
  else:
    abstract = _abstract(like)
  return manager.restore(step, args=ocp.args.Composite(
      **{name: ocp.args.StandardRestore(abstract)}))[name]


@jax.jit
def _scaled(weight, x):
  return jax.tree.map(lambda v: weight * v.astype(jnp.float32), x)


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(total, weight, x):
  return jax.tree.map(lambda a, v: a + weight * v.astype(jnp.float32), total, x)


def reconstruct(
    directory: str,
    *,
    target_step: int | None = None,
    sigma_rel: float | None = None,
    gamma: float | None = None,
    anytime_factor: float | None = None,
    tail_start: int = 0,
    like: Any = None,
    regularization: float = 1e-10,
) -> tuple[Any, float]:
  """Reconstructs an average of the training iterates from the snapshots in ``directory``.

  The target is a power EMA (``sigma_rel`` or ``gamma``; γ = 0 with ``tail_start`` is the uniform
  average of the iterates after ``tail_start``) or the anytime EMA ``anytime_factor`` at
  ``target_step`` (default: the last snapshot), using only snapshots at steps <= target_step.
  Snapshots are read one average at a time and summed into a float32 accumulator, so memory is
  about two models. ``like`` sets structure, dtypes and shardings (e.g. the params' abstract
  tree with NamedShardings); the result keeps them. Returns ``(params, fit_error)``.
  """
  steps = list_snapshots(directory)
  if not steps:
    raise ValueError(f"directory must hold snapshots written by SnapshotWriter, got {directory!r}")
  target_step = steps[-1] if target_step is None else _check_int("target_step", target_step, 1)
  _check_target(target_step, gamma, sigma_rel, anytime_factor, tail_start, regularization)
  used_steps = [s for s in steps if s <= target_step]
  if not used_steps:
    raise ValueError(f"target_step must be >= the first snapshot step {steps[0]}, "
                     f"got {target_step}")
  profiles = _read_profiles(directory, used_steps[-1])
  names = list(profiles)
  manager = _manager(directory, names)
  try:
    for s in used_steps[:-1]:
      if _read_profiles(directory, s, manager) != profiles:
        raise ValueError(f"directory: snapshot {s} stores other averages than snapshot "
                         f"{used_steps[-1]}; write one directory per tracking set")
    kinds = [_kind_of(averaging.from_config(spec)) for spec in profiles.values()]
    weights, fit_error = _solve_for_kinds(
        used_steps, kinds, target_step=target_step, gamma=gamma, sigma_rel=sigma_rel,
        anytime_factor=anytime_factor, tail_start=tail_start, regularization=regularization)
    total = None
    for i, s in enumerate(used_steps):
      for j, name in enumerate(names):
        if weights[i, j] != 0.0:
          params = _restore(manager, s, name, like)
          weight = jnp.float32(weights[i, j])
          total = (_scaled(weight, params) if total is None
                   else _accumulate(total, weight, params))
          del params
    abstract = _abstract(like) if like is not None else jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), _tree(manager, used_steps[-1], names[0]))
  finally:
    manager.close()
  total = jax.tree.map(lambda x, a: x.astype(a.dtype), total, abstract)
  return total, fit_error
