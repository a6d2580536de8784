"""The one schema of a training run (``default_config``), its validation, and the stored config
of a workdir. Config files import this module only, never the trainer.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections
from etils import epath

from anytime import checkpoint, optimizers, parallel, posthoc
from anytime import workdir as workdir_lib
from anytime.lm import data as data_lib
from anytime.lm import model as model_lib

# Keys whose change on resume is accepted: they do not change what the run computes up to the
# step it resumes from (for an anytime schedule, the total length is one of them).
SAFE_TO_CHANGE = (
    "train.total_steps", "train.eval_every", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.keep_period", "train.eval_batches",
    "train.snapshot_keep", "train.peak_flops_per_device", "data.worker_count",
    "data.cache_dir", "branches", "distributed",
    # How the run reacts to bad steps: a skipped update is never in a checkpoint, so switching
    # to "skip" after a "stop" (or back) changes nothing already computed.
    "train.nan_policy", "train.max_skipped_updates", "train.clean_steps_before_save",
    "train.spike_factor", "train.spike_policy",
    # Averages added start from the restored params at the restored step, dropped ones are
    # ignored; the restore prints one line naming them (anytime.checkpoint).
    "optimizer.averages",
)
# Sections taken whole (a schedule's options, the named averages): a key absent from them is
# an option not given, not a key that did not exist yet.
FREE_FORM = ("optimizer.schedule", "optimizer.averages")


def key_defaults() -> dict:
  """The schema's default of every dotted key outside the free-form sections: what a key that
  an older stored config lacks meant when that config was written."""
  flat = checkpoint.flatten(default_config().to_dict())
  return {k: v for k, v in flat.items()
          if not any(k == f or k.startswith(f + ".") for f in FREE_FORM)}


def default_config() -> ml_collections.ConfigDict:
  """The one schema of a training run: every key with its default."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  model = dataclasses.asdict(model_lib.ModelConfig())
  model["vocab_size"] = 0  # 0 = the tokenizer's vocabulary, padded to train.vocab_multiple.
  c.model = ml_collections.ConfigDict(model)
  c.data = data_lib.default_config()
  c.optimizer = optimizers.default_config()
  c.parallel = ml_collections.ConfigDict(dict(
      mesh=dict(data=-1, fsdp=1, tensor=1),  # one axis may be -1 (= the remaining devices)
      rules=[list(r) for r in parallel.DEFAULT_RULES],
      num_devices=0,  # 0 = all devices; N = the first N (tests, single-device references)
  ))
  c.distributed = ml_collections.ConfigDict(dict(
      coordinator_address="", num_processes=0, process_id=-1))
  c.train = ml_collections.ConfigDict(dict(
      total_steps=1000,
      batch_size=32,  # global, in sequences
      seq_len=128,
      vocab_multiple=8,
      eval_every=100,
      eval_batches=8,  # 0 = the whole validation split
      eval_batch_size=0,  # 0 = batch_size
      eval_at=[],  # extra steps to evaluate at (e.g. every horizon of a suite)
      log_every=10,
      checkpoint_every=500,
      keep_checkpoints=3,
      keep_period=0,  # also keep every checkpoint whose step is a multiple of this
      nan_policy="stop",  # "stop": fail with a clear error; "skip": drop the update and count it
      max_skipped_updates=10,  # with "skip": give up after this many consecutive bad steps
      # with "skip": after a skipped update, a checkpoint waits until this many updates in a row
      # were finite (the last good checkpoint before the streak is kept by retention).
      clean_steps_before_save=10,
      spike_factor=10.0,  # a finite loss above this x its running level (EMA) is a spike; 0 = off
      spike_policy="warn",  # on a spike: "warn" (print and go on) or "stop" (TrainingError)
      snapshot_every=0,  # post-hoc averaging snapshots of two power EMAs (0 = off)
      snapshot_keep=0,  # snapshots kept (0 = all)
      snapshot_sigma_rels=[0.05, 0.10],  # the tracked power EMAs (anytime.posthoc)
      peak_flops_per_device=0.0,  # 0 = from the device kind (MFU is omitted when unknown)
      async_checkpoints=True,
  ))
  c.branches = ml_collections.ConfigDict(dict(
      budgets=[],  # steps at which decayed checkpoints are wanted (the ends of the branches)
      cooldown_fraction=0.2,
      shape="linear",
      final_fraction=0.0,
  ))
  c.lock()
  return c


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Refuses impossible configs with a message naming the key, before any compilation."""
  t = config.train
  for key in ("total_steps", "batch_size", "seq_len", "eval_every", "log_every",
              "checkpoint_every", "vocab_multiple", "keep_checkpoints"):
    value = t[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"train.{key} must be a positive integer, got {value!r}")
  for key in ("eval_batches", "eval_batch_size", "keep_period", "snapshot_every",
              "snapshot_keep", "max_skipped_updates", "clean_steps_before_save"):
    if not isinstance(t[key], int) or t[key] < 0:
      raise ValueError(f"train.{key} must be a non-negative integer, got {t[key]!r}")
  if t.nan_policy not in ("stop", "skip"):
    raise ValueError(f"train.nan_policy must be 'stop' or 'skip', got {t.nan_policy!r}")
  if t.spike_policy not in ("warn", "stop"):
    raise ValueError(f"train.spike_policy must be 'warn' or 'stop', got {t.spike_policy!r}")
  if isinstance(t.spike_factor, bool) or not (t.spike_factor == 0 or t.spike_factor > 1):
    raise ValueError(f"train.spike_factor must be 0 (off) or a number > 1, got "
                     f"{t.spike_factor!r}")
  if config.model.max_len < t.seq_len:
    raise ValueError(f"model.max_len ({config.model.max_len}) must be >= train.seq_len "
                     f"({t.seq_len})")
  schedule = config.optimizer.schedule
  warmup = schedule.get("warmup_steps", 0)
  if warmup and warmup >= t.total_steps:
    raise ValueError(f"optimizer.schedule.warmup_steps ({warmup}) must be smaller than "
                     f"train.total_steps ({t.total_steps})")
  b = config.branches
  if not 0 < b.cooldown_fraction <= 1:
    raise ValueError(f"branches.cooldown_fraction must be in (0, 1], got {b.cooldown_fraction!r}")
  for budget in b.budgets:
    if not isinstance(budget, int) or budget < 1 or budget > t.total_steps:
      raise ValueError(f"branches.budgets entries must be integers in [1, train.total_steps="
                       f"{t.total_steps}], got {budget!r}")
  num_devices = config.parallel.num_devices or jax.device_count()
  if num_devices > jax.device_count():
    raise ValueError(f"parallel.num_devices ({num_devices}) exceeds the {jax.device_count()} "
                     "devices present")
  shape = dict(zip(parallel.MESH_AXES,
                   parallel.mesh_shape(config.parallel.mesh, num_devices)))
  batch_axes = dict(map(tuple, config.parallel.rules)).get("batch")
  batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
  batch_shards = math.prod(shape[a] for a in batch_axes)
  for key in ("batch_size", "eval_batch_size"):
    if t[key] and t[key] % batch_shards:
      raise ValueError(f"train.{key} ({t[key]}) must be divisible by the data-parallel size "
                       f"{batch_shards} (mesh axes {batch_axes} of {shape})")
    if t[key] and t[key] % jax.process_count():
      raise ValueError(f"train.{key} must be divisible by the {jax.process_count()} processes")
  optimizers.build(config.optimizer, posthoc_tracking(config))  # validates optimizer + averages
  model_lib.ModelConfig(**{**config.model.to_dict(), "vocab_size": 1})
  data_lib.validate_config(config.data)


def stored_config(workdir: str | epath.Path) -> ml_collections.ConfigDict:
  """The resolved config a workdir's main branch was trained with."""
  directory = workdir_lib.main_dir(workdir)
  stored = checkpoint.read_json(workdir_lib.config_file(directory))
  if stored is None:
    raise FileNotFoundError(f"--workdir {workdir} holds no main branch (no {directory}/"
                            "config.json); train it first")
  def merge(defaults, values):
    out = dict(defaults)
    for key, value in values.items():
      # Free-form sections (a schedule's options, the named averages) are taken whole.
      nested = isinstance(value, dict) and isinstance(out.get(key), dict)
      out[key] = merge(out[key], value) if nested and key not in ("schedule", "averages") \
          else value
    return out

  config = ml_collections.ConfigDict(merge(default_config().to_dict(), stored))
  config.lock()
  return config


def posthoc_tracking(config: ml_collections.ConfigDict) -> dict:
  """The power EMAs tracked for post-hoc averaging (none when snapshots are off)."""
  if not config.train.snapshot_every:
    return {}
  return posthoc.default_tracking(tuple(config.train.snapshot_sigma_rels))


# ---------------------------------------------------------------------------- the suite's schema


def default_executor() -> ml_collections.ConfigDict:
  """``suite.executor``: which engine runs the suite's units (``experiments.executors``)."""
  return ml_collections.ConfigDict(dict(
      name="local",  # local | ray | slurm
      ray=dict(
          address="",  # "" starts a local cluster; "auto" or "HOST:PORT" joins one
          num_cpus=0,  # the local cluster's CPUs (0 = all cores); unused when joining
          num_cpus_per_unit=1.0,  # a unit that declares no "CPU"
          max_retries=3,  # re-runs after a worker/node death (and exceptions, see below)
          retry_exceptions=True,  # a unit that raised is retried too, from the same budget
      ),
      slurm=dict(
          cluster="slurm",  # slurm | local (submitit's local executor: subprocesses here)
          folder="",  # submitit's jobs and logs; "" = WORKDIR/executor/slurm (shared FS)
          partition="",
          account="",
          gpus_per_node=0,  # a unit that declares "GPU" gets that many instead
          cpus_per_task=1,  # a unit that declares "CPU" gets that many instead
          mem_gb=0.0,  # 0 = the partition's default
          timeout_min=24 * 60,
          setup=[],  # shell lines run before each job (module load ..., source venv)
          array_parallelism=64,  # jobs of one array running at once
          max_retries=3,  # resubmissions of a failed job (timeouts/preemption: submitit requeues)
          poll_s=5.0,  # how often the coordinator looks at the jobs
      ),
  ))


def default_suite() -> ml_collections.ConfigDict:
  """The comparison suite's options (``config.suite``) with their defaults. Method names are
  checked against the registry (``anytime.experiments.methods``) before anything runs."""
  return ml_collections.ConfigDict(dict(
      base_steps=100,  # T, the 1x horizon, in steps
      multipliers=[1, 2, 4, 8],
      baselines=["cosine", "d2z"],  # tuned per horizon; "cosine_zero" is the third option
      methods=["constant", "inverse_sqrt", "wsd_s", "schedule_free"],  # one LR for all horizons
      warmup_steps=10,
      warmup_init_fraction=0.1,
      cosine_final_fraction=0.1,
      lr_centre=3e-3,  # the initial grid: lr_points values, lr_factor apart, around lr_centre
      lr_points=3,
      lr_factor=2 ** 0.5,
      lr_grids={},  # {method: [LR, ...]}: a fixed starting grid for that method instead
      max_extensions=3,  # per side: how far a grid may grow when its best LR is on an edge
      tuning_seeds=[0],  # every choice (LRs, the envelope's family) is made on these seeds
      seeds=3,  # reporting seeds, fresh: tuning_seeds never report a mean, delta or verdict
      max_seeds=3,  # > seeds: undecided cells get more seeds in a second stage, up to this
      equivalence_margin=0.01,  # nats: "equivalent" when the interval lies inside ±margin
      alpha=0.05,
      primary=["constant", "ema_25"],  # [method, candidate]: the primary comparison
      multiplicity="holm",  # holm | bonferroni | none: across the other cells
      max_batch_runs=12,  # runs trained as one vmapped program at most
      inverse_sqrt_offset=40.0,
      ema_factors=[6.25, 25.0, 100.0],
      headline_ema=25.0,  # the seed paper's EMA-25
      lawa_every=0,  # 0 = base_steps // 10
      lawa_size=10,
      wsd_cooldown_fraction=0.2,
      wsd_variants=[["1-sqrt", 0.0], ["linear", 0.0], ["1-sqrt", 0.1], ["linear", 0.1]],
      wsd_s_cooldown_fraction=0.2,  # of the base horizon T
      evals_per_base=2,  # evaluations per T along the anytime runs (for the curves)
      posthoc_sigma_rels=[0.05, 0.1, 0.2],  # reconstructed after training ([] = off)
      snapshots_per_base=10,
      merge_last=[4],  # merge the last k checkpoints before each horizon ([] = off)
      merge_ema_alpha=0.5,  # the "ema" merge's decay per checkpoint
      checkpoints_per_base=10,  # main checkpoints per T of the constant runs (for merging)
      executor=default_executor(),
      unit_resources={"CPU": 1},  # what one unit takes: {"GPU": 8}, {"TPU": 4, "TPU-v4-8-head": 1}
      cost_mfu=0.4,  # --dry-run: accelerator-hours at this model FLOP utilization
      cost_peak_flops=989e12,  # --dry-run: per accelerator (H100 dense bf16)
  ))


def suite_defaults() -> dict:
  """Dotted ``suite.*`` defaults: what a key an older stored suite lacks meant then."""
  return {f"suite.{k}": v for k, v in checkpoint.flatten(default_suite().to_dict()).items()}


def require_every_key(config: ml_collections.ConfigDict, source: str) -> None:
  """Refuses a training config that lacks a key of the schema (``source`` names where it came
  from): config files start from ``default_config()`` and change what differs."""
  have = set(checkpoint.flatten(config.to_dict()))
  missing = sorted(k for k in key_defaults()
                   if k not in have and not any(k.startswith(h + ".") for h in have))
  if missing:
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    raise ValueError(f"{source}: the config lacks {shown}; build it from default_config() and "
                     "change what differs")


def apply_schedule_options(config: ml_collections.ConfigDict,
                           options: dict[str, object]) -> None:
  """Sets ``optimizer.schedule`` options given one by one (on the command line). The section is
  free-form (its keys depend on ``name``): any key may be set, ``schedules.from_config`` refuses
  unknown ones. Switching ``name`` drops the options the new schedule does not take, and says
  so; the rest of the config stays locked."""
  if not options:
    return
  import inspect  # pylint: disable=g-import-not-at-top

  from anytime import schedules  # pylint: disable=g-import-not-at-top

  schedule = config.optimizer.schedule.to_dict()
  name = options.get("name", schedule.get("name"))
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
  schedule.update(options)
  config.unlock()
  config.optimizer.schedule = schedule
  config.lock()
