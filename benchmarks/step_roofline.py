"""The quickstart model's train step beside this CPU's limit: GFLOP/s vs the rate of its own matmuls.

    python benchmarks/step_roofline.py [--runs 1,6] [--rounds 7] [--k 8,25] [--profile]
                                       [--bf16-loss-steps 400]

The step is the one the suite trains (configs/compare_tiny.py: 2 layers, d = 64, byte vocab,
batch 16 x 64, cosine + AdamW), vmapped over R runs exactly as ``anytime.batched`` builds it
(``parallel.jit_over_copies``, run axis sharded by ``batched.run_sharding``). One invocation
prints, for each R:

* XLA's cost analysis of the step (GFLOP per step) and the matmul rate of the step's *own*
  dot shapes on this machine now: every ``dot`` of the compiled program timed alone with its
  shapes and dimension numbers, flop-weighted (the roofline a step made only of its matmuls
  would reach);
* the step time of several variants side by side, measured in interleaved rounds (medians), each
  as ms per run-step, GFLOP/s and its ratio to that matmul rate:
    - ``today``: the step before this benchmark (``model.weight_grads="autodiff"``) as
      ``batched`` runs it: the run axis sharded over the 2 CPU devices that ``anytime.main
      compare`` sets up, YNNPACK fusions off, one dispatch per step;
    - ``new``: ``model.weight_grads="narrow"`` (the default now), same layout;
    - ``1 device``: the same program on one CPU device (XLA's 2 intra-op threads);
    - ``ynn on``: XLA's default YNNPACK fusions (the cost of the miscompile workaround in
      ``parallel.jit_over_copies``);
    - ``scan k``: ``parallel.scan_steps``: k steps in one dispatch, learning rates as input;
    - ``bf16 matmuls``: ``model.matmul_dtype="bfloat16"`` (operands rounded to bf16, float32
      accumulation), with scan; ``--bf16-loss-steps N`` trains N steps both ways and prints
      the eval-loss difference beside the seed spread.
* with ``--profile``: where the step's time goes (XLA's own per-op trace), by phase
  (forward / backward / optimizer + averages) and kind (matmul, layout copy, other fusions).

The machine may be shared: only the side-by-side ratios of one invocation mean anything.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anytime import parallel  # noqa: E402  (before JAX starts its backends)

parallel.use_cpu_devices()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from anytime import loop  # noqa: E402
from anytime.experiments import methods, plan  # noqa: E402
from configs import compare_tiny  # noqa: E402

_YNN_OFF = dict(parallel._CPU_SAFE_COMPILER_OPTIONS)  # pylint: disable=protected-access


def _template(weight_grads: str, matmul_dtype: str = "", seed: int = 0, steps: int = 200,
              lr: float = 3e-3):
  config = compare_tiny.get_config()
  run_config = plan.run_config(config, methods.REGISTRY["cosine"], lr, seed, steps)
  run_config.model.weight_grads = weight_grads
  run_config.model.matmul_dtype = matmul_dtype
  return loop.build_run(run_config, tempfile.mkdtemp(), constrain_activations=False)


def bf16_loss_effect(steps: int, seeds: int, k: int) -> None:
  """Eval loss after ``steps`` cosine steps (the suite's centre LR), float32 vs bfloat16 matmul
  operands, ``seeds`` seeds trained as one vmapped group each; the seed spread for scale."""
  print(f"\nbf16 matmul operands (float32 accumulation and everything else), quickstart model, "
        f"{steps} cosine steps at LR 4.24e-3, {seeds} seeds, eval loss on the 1,024 held-out "
        "windows:")
  finals = {}
  for matmul_dtype in ("float32", "bfloat16"):
    runs = [_template("narrow", matmul_dtype, seed, steps, 4.24e-3) for seed in range(seeds)]
    step = parallel.jit_steps_over_copies(runs[0].step_fn, donate_argnums=0)
    state = parallel.jit_over_copies(runs[0].init_fn)(np.arange(seeds, dtype=np.uint32))
    iterators = [r.make_train_iterator() for r in runs]
    lrs = np.stack([loop.learning_rate_table(r.schedule, 0, steps) for r in runs], 1)
    start = time.perf_counter()
    for first in range(0, steps, k):
      chunk = [[next(it) for it in iterators] for _ in range(k)]
      batches = {key: np.stack([np.stack([b[key] for b in row]) for row in chunk])
                 for key in chunk[0][0]}
      state, _ = step(state, batches, lrs[first:first + k])
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    evaluate = parallel.jit_over_copies(runs[0].eval_fn, in_axes=(0, None))
    totals = [evaluate(state.params, b) for b in runs[0].eval_batches]
    loss = (np.sum([np.asarray(t[0]) for t in totals], 0) /
            np.sum([np.asarray(t[1]) for t in totals], 0))
    finals[matmul_dtype] = loss
    print(f"  {matmul_dtype:9s} eval loss per seed {np.round(loss, 4)}  mean {loss.mean():.4f}  "
          f"({seconds:.1f} s for {seeds} x {steps} steps)")
  delta = finals["bfloat16"] - finals["float32"]
  print(f"  bf16 - f32 per seed {np.round(delta, 4)}, mean {delta.mean():+.4f} "
        f"(seed spread of f32: s.d. {finals['float32'].std(ddof=1):.4f})")


def _sharding(count: int, devices: int):
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:devices]), ("runs",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("runs"))


# ---------------------------------------------------------------- the step's own matmuls

_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\w[\w\-]*)\((.*)$")


def _dims(text: str, key: str) -> tuple[int, ...]:
  m = re.search(key + r"=\{([\d,]*)\}", text)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def program_dots(hlo_text: str) -> list[tuple]:
  """(lhs shape, rhs shape, dimension numbers) of every dot in a compiled program's text."""
  shapes, dots = {}, []
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, _, dims, op, rest = m.groups()
    shapes[name] = tuple(int(d) for d in dims.split(",") if d)
    if op == "dot":
      operands = re.findall(r"%([\w.\-]+)", rest.split(")", 1)[0])
      dots.append((operands[0], operands[1], rest))
  out = []
  for lhs, rhs, rest in dots:
    numbers = ((_dims(rest, "lhs_contracting_dims"), _dims(rest, "rhs_contracting_dims")),
               (_dims(rest, "lhs_batch_dims"), _dims(rest, "rhs_batch_dims")))
    out.append((shapes[lhs], shapes[rhs], numbers))
  return out


def _dot_flops(lhs, rhs, numbers) -> int:
  (lc, _), (lb, _) = numbers
  k = int(np.prod([lhs[d] for d in lc]))
  batch = int(np.prod([lhs[d] for d in lb]))
  m = int(np.prod(lhs)) // (k * batch)
  n = int(np.prod(rhs)) // (k * batch)
  return 2 * batch * m * n * k


def matmul_rate(dots: list[tuple], device, repeats: int = 30) -> tuple[float, float]:
  """(GFLOP, GFLOP/s) of the program's dots, each timed alone (median) on ``device``."""
  rng = np.random.default_rng(0)
  total_flops, total_seconds = 0, 0.0
  for (lhs, rhs, numbers), count in collections.Counter(dots).items():
    a = jax.device_put(rng.standard_normal(lhs, np.float32), device)
    b = jax.device_put(rng.standard_normal(rhs, np.float32), device)
    fn = jax.jit(lambda x, y, n=numbers: jax.lax.dot_general(x, y, n),
                 compiler_options=_YNN_OFF)
    fn(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      fn(a, b).block_until_ready()
      times.append(time.perf_counter() - start)
    flops = _dot_flops(lhs, rhs, numbers)
    total_flops += count * flops
    total_seconds += count * float(np.median(times))
  return total_flops / 1e9, total_flops / total_seconds / 1e9


# ---------------------------------------------------------------- step layouts


class Variant:
  """One layout of the vmapped train step; ``advance(steps)`` times ``steps`` steps."""

  def __init__(self, template, one_batch, count: int, *, devices: int, ynn_off: bool = True,
               k: int = 1):
    sharding = _sharding(count, devices)
    options = _YNN_OFF if ynn_off else None
    self.k = k
    self.count = count
    init = parallel.jit_over_copies(template.init_fn)
    self.state = jax.device_put(init(np.arange(count, dtype=np.uint32)), sharding)
    batch = {key: np.stack([v] * count) for key, v in one_batch.items()}
    lrs = np.full((count,), 1e-3, np.float32)
    if k == 1:
      self.fn = jax.jit(jax.vmap(template.step_fn), donate_argnums=0, in_shardings=sharding,
                        out_shardings=sharding, compiler_options=options)
      self.batch = jax.device_put(batch, sharding)
      self.lrs = jax.device_put(lrs, sharding)
    else:
      stacked = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(None, "runs"))
      self.fn = jax.jit(parallel.scan_steps(jax.vmap(template.step_fn)), donate_argnums=0,
                        in_shardings=(sharding, stacked, stacked),
                        out_shardings=(sharding, stacked), compiler_options=options)
      self.batch = jax.device_put({key: np.stack([v] * k) for key, v in batch.items()}, stacked)
      self.lrs = jax.device_put(np.stack([lrs] * k), stacked)
    self.seconds: list[float] = []
    self.advance(max(k, 2), record=False)  # compile and warm up

  def compiled(self):
    return self.fn.lower(self.state, self.batch, self.lrs).compile()

  def advance(self, steps: int, record: bool = True) -> None:
    """At least ``steps`` steps, in whole dispatches of k; records seconds per step."""
    dispatches = -(-steps // self.k)
    start = time.perf_counter()
    for _ in range(dispatches):
      self.state, metrics = self.fn(self.state, self.batch, self.lrs)
    jax.block_until_ready(metrics)
    if record:
      self.seconds.append((time.perf_counter() - start) / (dispatches * self.k))

  @property
  def ms_per_run_step(self) -> float:
    return float(np.median(self.seconds)) * 1e3 / self.count


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost["flops"])


# ---------------------------------------------------------------- profile


def _phase(metadata: str) -> str:
  if "transpose(jvp" in metadata or "_matmul_bwd" in metadata:
    return "backward"
  if "jvp(" in metadata:
    return "forward"
  return "optimizer+averages"


def profile(variant: Variant, steps: int = 10) -> None:
  """Per-op time of the step from XLA's trace, by phase and kind."""
  text = variant.compiled().as_text()
  info = {}
  for line in text.splitlines():
    m = _INSTR.match(line)
    if m:
      meta = re.search(r'op_name="([^"]*)"', line)
      info[m.group(1)] = (m.group(4), meta.group(1) if meta else "", m.group(3))
  directory = tempfile.mkdtemp()
  with jax.profiler.trace(directory):
    variant.advance(steps, record=False)
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  data = ProfileData.from_file(glob.glob(directory + "/**/*.xplane.pb", recursive=True)[0])
  per_op = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if "XLAEigen" not in line.name and "XLACpu" not in line.name:
        continue
      for event in line.events:
        if event.name in info:
          per_op[event.name] += event.duration_ns / steps / 1e6
  table = collections.Counter()
  for name, ms in per_op.items():
    op, metadata, _ = info[name]
    kind = ("matmul" if op == "dot" or name.startswith("dot") else
            "layout copy (transpose)" if name.startswith(("copy", "transpose")) else
            "reduction" if "reduce" in name else "elementwise/other")
    table[(_phase(metadata), kind)] += ms
  total = sum(table.values())
  print(f"    profile (XLA ops, {total:.1f} ms of op time per step, R = {variant.count}):")
  for (phase, kind), ms in sorted(table.items(), key=lambda kv: -kv[1]):
    print(f"      {phase:19s} {kind:24s} {ms:7.2f} ms  {100 * ms / total:5.1f}%")
  print("      largest ops:")
  for name, ms in per_op.most_common(6):
    print(f"        {ms:6.2f} ms  {name:28s} f32[{info[name][2]}]  {info[name][1][-60:]}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="1,6", help="numbers of runs R in one vmapped step")
  parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
  parser.add_argument("--k", default="8,25",
                      help="steps per dispatch of the scan variants (comma-separated; the suite "
                           "uses the largest k <= loop.MAX_STEPS_PER_DISPATCH dividing its "
                           "cadences: 25 for the quickstart, 20 for the real-text suite)")
  parser.add_argument("--profile", action="store_true", help="per-op breakdown of each R")
  parser.add_argument("--bf16-loss-steps", type=int, default=0,
                      help="also train this many steps with f32 vs bf16 matmuls (0 = skip)")
  parser.add_argument("--bf16-loss-seeds", type=int, default=4)
  args = parser.parse_args()
  ks = [int(k) for k in args.k.split(",")]
  steps_per_round = max(ks)
  old, new = _template("autodiff"), _template("narrow")
  bf16 = _template("narrow", "bfloat16")
  one = next(new.make_train_iterator())
  print(f"quickstart train step (configs/compare_tiny.py), {os.cpu_count()} CPU cores, "
        f"{jax.device_count()} CPU devices, jax {jax.__version__}; medians of {args.rounds} "
        "interleaved rounds")
  for count in [int(r) for r in args.runs.split(",")]:
    devices = max(d for d in range(1, jax.device_count() + 1) if count % d == 0)
    today = f"today ({devices} dev)"
    variants = {
        today: Variant(old, one, count, devices=devices),
        "old, 1 device": Variant(old, one, count, devices=1),
        f"new ({devices} dev)": Variant(new, one, count, devices=devices),
        "new, 1 device": Variant(new, one, count, devices=1),
        f"new, ynn on ({devices} dev)": Variant(new, one, count, devices=devices, ynn_off=False),
        **{f"new, scan k={k} ({devices} dev)": Variant(new, one, count, devices=devices, k=k)
           for k in ks},
        f"new, bf16 matmuls, scan k={ks[0]}": Variant(bf16, one, count, devices=devices,
                                                      k=ks[0]),
    }
    single = variants["old, 1 device"].compiled()
    gflop = _flops(single) / 1e9
    dot_gflop, rate = matmul_rate(program_dots(single.as_text()), jax.devices()[0])
    for _ in range(args.rounds):
      for variant in variants.values():
        variant.advance(steps_per_round)
    print(f"\nR = {count}: {gflop:.3f} GFLOP per step (XLA cost analysis), {dot_gflop:.3f} of "
          f"them in matmuls; the step's own matmuls alone: {rate:.0f} GFLOP/s")
    base = variants[today].ms_per_run_step
    for name, variant in variants.items():
      ms = variant.ms_per_run_step
      achieved = gflop / count / (ms / 1e3)
      print(f"  {name:20s} {ms:7.2f} ms per run-step  {achieved:6.1f} GFLOP/s  "
            f"{100 * achieved / rate:5.1f}% of the matmul rate  {base / ms:5.2f}x vs today")
    if args.profile:
      profile(variants["old, 1 device"])
      profile(variants["new, 1 device"])
  if args.bf16_loss_steps:
    bf16_loss_effect(args.bf16_loss_steps, args.bf16_loss_seeds, ks[0])


if __name__ == "__main__":
  main()
