"""The suite's methods as objects: one registry, one object per method.

A method owns its schedule, its tuning rule (per horizon, or one LR for all horizons), the
columns it produces and how they are evaluated. The planner, the tuner and the report iterate
over :func:`active` and ask the objects; no other module compares a method's name.

- :class:`Baseline` — a horizon-aware schedule tuned per horizon; an envelope family
  (``cosine`` to 10%, ``d2z`` linear decay to zero, ``cosine_zero``).
- :class:`Anytime` — one run for all horizons, one LR chosen by the mean loss over horizons
  (``constant`` with its averages, ``inverse_sqrt``, ``wsd_s``, ``schedule_free``).
- :class:`DecayBranch` — WSD decay branches of a parent run (one per horizon); a column tuned
  per horizon over the parent's LRs.
- :class:`PostTraining` — columns computed after training from a run's files: post-hoc EMAs
  reconstructed from snapshots (an oracle: the best σ_rel on the evaluation set, so no verdict)
  and merges of its last checkpoints.

Adding a method: subclass :class:`Method` (or one of these) and :func:`register` an instance;
``suite.methods`` (or ``suite.baselines``) can then name it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from anytime import naming, schedules


def horizons(suite: ml_collections.ConfigDict) -> list[int]:
  """The suite's horizons in steps, ascending."""
  return sorted(suite.base_steps * m for m in suite.multipliers)


def _warmup(s: ml_collections.ConfigDict) -> dict[str, Any]:
  return dict(warmup_steps=s.warmup_steps, warmup_init_fraction=s.warmup_init_fraction)


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of the suite. Trained methods have runs (``parent is None``); derived ones
  (decay branches, post-training columns) come from the runs of their ``parent``."""

  name: str
  per_horizon: bool = False  # tuned per horizon (else one LR for all horizons)
  family: bool = False  # an envelope family (a baseline)
  parent: str | None = None  # the method whose runs this one is derived from
  oracle: bool = False  # selected on the evaluation set: shown, never given a verdict
  description: str = ""

  def schedule(self, lr: float, horizon: int, s: ml_collections.ConfigDict) -> dict[str, Any]:
    """The run's ``optimizer.schedule`` at peak LR ``lr`` (``horizon``: its end step)."""
    del horizon
    return dict(name="constant", peak_value=lr, **_warmup(s))

  def configure(self, c: ml_collections.ConfigDict, s: ml_collections.ConfigDict) -> None:
    """Changes a run's training config beyond its schedule (averages, optimizer, cadence)."""

  def candidates(self, s: ml_collections.ConfigDict) -> tuple[str, ...]:
    """What this method's own evaluations report (``raw``, an average's name, ...)."""
    del s
    return ("raw",)

  def derived(self, s: ml_collections.ConfigDict) -> list["Method"]:
    """Methods computed from this method's runs (decay branches, post-training columns)."""
    del s
    return []

  def keep_steps(self, s: ml_collections.ConfigDict) -> frozenset[int]:
    """Checkpoints of this method's runs that derived methods read (branch points)."""
    return frozenset().union(*(m.needs_steps(s) for m in self.derived(s)))

  def needs_steps(self, s: ml_collections.ConfigDict) -> frozenset[int]:
    del s
    return frozenset()


@dataclasses.dataclass(frozen=True)
class Baseline(Method):
  """A schedule that needs its horizon, tuned per horizon; an envelope family."""

  shape: str = "cosine"  # cosine | linear
  final: str = "suite"  # "suite": suite.cosine_final_fraction, else a number as text
  per_horizon: bool = True
  family: bool = True

  def schedule(self, lr, horizon, s):
    final = s.cosine_final_fraction if self.final == "suite" else float(self.final)
    return dict(name=self.shape, peak_value=lr, total_steps=horizon, final_fraction=final,
                **_warmup(s))


@dataclasses.dataclass(frozen=True)
class Anytime(Method):
  """One run for all horizons, evaluated at each; one LR for all horizons."""

  schedule_name: str = "constant"
  averages: bool = False  # anytime EMAs (suite.ema_factors) and a LAWA window
  optimizer: str = ""  # replaces optimizer.name ("" = the base config's)
  reported: tuple[str, ...] = ("raw",)  # "headline" = the headline EMA's name
  branch_variants: bool = False  # WSD decay branches (suite.wsd_variants) of its runs
  post_training: bool = False  # post-hoc EMAs and checkpoint merges of its runs

  def schedule(self, lr, horizon, s):
    if self.schedule_name == "inverse_sqrt":
      return dict(name="inverse_sqrt", peak_value=lr, offset=s.inverse_sqrt_offset,
                  **_warmup(s))
    if self.schedule_name == "wsd_s":
      return dict(name="wsd_s", peak_value=lr, decay_ends=horizons(s),
                  cooldown_steps=naming.cooldown_steps(s.wsd_s_cooldown_fraction, s.base_steps),
                  shape="linear", final_fraction=0.0, **_warmup(s))
    return super().schedule(lr, horizon, s)

  def configure(self, c, s):
    c.train.eval_every = s.base_steps // s.evals_per_base
    c.train.eval_at = horizons(s)
    if self.averages:
      averages = {naming.ema_name(f): dict(kind="anytime_ema", factor=float(f))
                  for f in s.ema_factors}
      averages["lawa"] = dict(kind="window", every=s.lawa_every or max(s.base_steps // 10, 1),
                              size=s.lawa_size)
      c.optimizer.averages = averages
    if self.optimizer:
      c.optimizer.name = self.optimizer
    if self.branch_variants or self.post_training:
      c.train.checkpoint_every = s.base_steps // s.checkpoints_per_base
      c.train.keep_checkpoints = 10**6  # every one: branch points and merges read them
    if self.post_training and s.posthoc_sigma_rels:
      c.train.snapshot_every = s.base_steps // s.snapshots_per_base

  def candidates(self, s):
    return tuple(naming.ema_name(s.headline_ema) if r == "headline" else r
                 for r in self.reported)

  def derived(self, s):
    out: list[Method] = []
    if self.branch_variants:
      out += [DecayBranch(name=f"wsd_{shape}_{final:g}", parent=self.name, shape=shape,
                          final_fraction=float(final)) for shape, final in s.wsd_variants]
    if self.post_training:
      if s.posthoc_sigma_rels:
        out.append(PostHoc(name="posthoc_best", parent=self.name, oracle=True))
      if s.merge_last:
        out.append(Merges(name="merges", parent=self.name))
    return out


@dataclasses.dataclass(frozen=True)
class DecayBranch(Method):
  """A WSD decay branch of each parent run, one per horizon (its cooldown ends there)."""

  shape: str = "linear"
  final_fraction: float = 0.0
  per_horizon: bool = True

  def branch(self, s: ml_collections.ConfigDict, horizon: int) -> dict[str, Any]:
    """``name``, ``branch_step`` and the ``decay`` section of the branch ending at horizon."""
    cooldown = naming.cooldown_steps(s.wsd_cooldown_fraction, horizon)
    return dict(name=naming.branch_name(f"{self.shape}_to{self.final_fraction:g}", horizon),
                branch_step=horizon - cooldown,
                decay=dict(branch_step=horizon - cooldown, cooldown_steps=cooldown,
                           shape=self.shape, final_fraction=self.final_fraction))

  def needs_steps(self, s):
    return frozenset(self.branch(s, h)["branch_step"] for h in horizons(s))


@dataclasses.dataclass(frozen=True)
class PostTraining(Method):
  """Columns computed after training from a parent run's files (``experiments.evaluate``)."""

  def columns(self, s: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The candidates (column names under the parent method) it produces."""
    del s
    return ()


@dataclasses.dataclass(frozen=True)
class PostHoc(PostTraining):
  """Post-hoc power EMAs reconstructed from snapshots; the best σ_rel per horizon and seed."""

  def columns(self, s):
    return ("posthoc_best",)


@dataclasses.dataclass(frozen=True)
class Merges(PostTraining):
  """Uniform and EMA-weighted merges of the last k checkpoints before each horizon."""

  def columns(self, s):
    return tuple(f"merge_{kind}_{k}" for k in s.merge_last for kind in ("uniform", "ema"))


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
  """Adds a method to the registry (a name may be registered once)."""
  if method.name in REGISTRY and REGISTRY[method.name] != method:
    raise ValueError(f"method {method.name!r} is registered already")
  REGISTRY[method.name] = method
  return method


for _m in (
    Baseline(name="cosine", description="cosine to suite.cosine_final_fraction of peak"),
    Baseline(name="d2z", shape="linear", final="0", description="linear decay to zero"),
    Baseline(name="cosine_zero", final="0", description="cosine to zero"),
    Anytime(name="constant", averages=True, reported=("raw", "headline", "lawa"),
            branch_variants=True, post_training=True, description="constant LR + averages"),
    Anytime(name="inverse_sqrt", schedule_name="inverse_sqrt", averages=True,
            reported=("headline",), description="1/sqrt(t) + the headline EMA"),
    Anytime(name="wsd_s", schedule_name="wsd_s", description="WSD-S (one run)"),
    Anytime(name="schedule_free", optimizer="schedule_free_adamw",
            reported=("schedule_free",), description="Schedule-Free AdamW"),
):
  register(_m)


def lookup(name: str, field: str) -> Method:
  if name not in REGISTRY:
    raise ValueError(f"suite.{field}: unknown method {name!r}; accepted: {sorted(REGISTRY)}")
  return REGISTRY[name]


def active(s: ml_collections.ConfigDict) -> list[Method]:
  """The suite's methods: its baselines, its methods, and everything derived from them."""
  out: list[Method] = []
  for field in ("baselines", "methods"):
    for name in s[field]:
      method = lookup(name, field)
      if method.family != (field == "baselines"):
        kind = "a baseline (tuned per horizon)" if method.family else "not a baseline"
        raise ValueError(f"suite.{field}: {name!r} is {kind}; list it under suite."
                         f"{'methods' if method.family else 'baselines'}")
      out.append(method)
  for method in list(out):
    out += method.derived(s)
  return out


def by_name(methods: Sequence[Method]) -> Mapping[str, Method]:
  return {m.name: m for m in methods}


def trained(methods: Sequence[Method]) -> list[Method]:
  """The methods that have runs of their own."""
  return [m for m in methods if m.parent is None]


def run_method(methods: Mapping[str, Method], name: str) -> Method:
  """The method whose runs a column's method is trained by (itself, or its parent)."""
  method = methods[name]
  return methods[method.parent] if method.parent else method


def validate_variants(s: ml_collections.ConfigDict) -> None:
  """Decay-branch shapes name directories: only known shapes reach the file system."""
  for variant in s.wsd_variants:
    if (len(variant) != 2 or variant[0] not in schedules.COOLDOWN_SHAPES or
        not 0 <= variant[1] <= 1):
      raise ValueError(f"suite.wsd_variants entries are [shape, final_fraction] with shape in "
                       f"{schedules.COOLDOWN_SHAPES} and final_fraction in [0, 1], got "
                       f"{list(variant)}")
