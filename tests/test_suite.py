"""The comparison suite end to end on one tiny suite: records are what the runs' metrics hold,
a finished suite is not retrained, an interrupted one resumes to the same records, a grid too
low for the optimum is extended, a method added in this file alone runs through the suite,
and a bad suite config fails in one line before any file.

One module-scoped suite (horizons 4 and 8 steps, 2-point LR grids deliberately below the
optimum, tuning seed 0 and one fresh reporting seed, cosine + D2Z baselines, constant + 1/sqrt(t)
anytime runs with one WSD variant, post-hoc and merge columns, and the toy method below) is
trained once; the other tests copy its workdir.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter
from pathlib import Path


import ml_collections
import numpy as np
import pytest

from anytime import batched, checkpoint, loop, naming
from anytime.experiments import compare, methods, plan, tuning

import _tiny

# Whole training runs that share most of their programs.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("compilation_cache")]

HORIZONS = (4, 8)
LR_CENTRE = 1e-3  # the initial grid {8.4e-4, 1.19e-3}: below the optimum of 4-8 Adam steps
REPORT_FILES = ("table.md", "table.csv", "table.json", "deltas.csv", "loss_vs_lr.png",
                "deltas.png", "anytime.png")


class ShiftedInverseSqrt(methods.Anytime):
  """A toy anytime method, defined and registered here alone: 1/sqrt(t) with a short offset,
  read through its raw iterate."""

  def schedule(self, lr, horizon, s):
    return dict(name="inverse_sqrt", peak_value=lr, offset=2.0,
                warmup_steps=s.warmup_steps, warmup_init_fraction=s.warmup_init_fraction)


TOY = methods.register(ShiftedInverseSqrt(name="toy_isqrt", description="toy"))
RUN_NAME = re.compile(r"^(?P<method>.+?)(?:_(?P<horizon>\d+))?_lr(?P<tag>[^_]+)_s(?P<seed>\d+)$")


def suite_config(**suite_overrides) -> ml_collections.ConfigDict:
  return _tiny.tiny_suite(**{**dict(
      base_steps=4, multipliers=[1, 2], warmup_steps=1, lr_centre=LR_CENTRE, lr_points=2,
      max_extensions=1, tuning_seeds=[0], seeds=1, max_seeds=1, baselines=["cosine", "d2z"],
      methods=["constant", "inverse_sqrt", "toy_isqrt"], wsd_variants=[["linear", 0.0]],
      posthoc_sigma_rels=[0.1], snapshots_per_base=2, checkpoints_per_base=2, merge_last=[2]),
      **suite_overrides})


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
  """The tiny suite, run once: (workdir, config, report)."""
  workdir = tmp_path_factory.mktemp("suite")
  config = suite_config()
  report = compare.run_suite(config, str(workdir))
  return workdir, config, report


def copy_workdir(source: Path, target: Path) -> Path:
  shutil.copytree(source, target)
  return target


def count_training(monkeypatch) -> list[list[str]]:
  """Records the run names of every group ``batched.train_group`` is asked to train."""
  calls = []
  real = batched.train_group

  def counting(specs, **kwargs):
    calls.append([spec.name for spec in specs])
    return real(specs, **kwargs)

  monkeypatch.setattr(batched, "train_group", counting)
  return calls


def stored_records(workdir: Path) -> list[tuning.Record]:
  return [tuning.Record(**r) for r in json.loads((workdir / "records.json").read_text())[
      "records"]]


def record_key(r: tuning.Record):
  return (r.method, r.candidate, r.horizon, r.peak_value, r.seed)


def file_bytes(paths) -> dict[str, bytes]:
  return {str(p): p.read_bytes() for p in sorted(paths) if p.is_file()}


# ---------------------------------------------------------------------------- independent re-read


def evals_at(directory: Path, step: int) -> dict[str, float]:
  """``{candidate: loss}`` of a run directory's evaluation at ``step``, read from metrics.jsonl."""
  found = [r for r in map(json.loads, (directory / "metrics.jsonl").read_text().splitlines())
           if r["step"] == step and any(k.startswith("eval_loss/") for k in r)]
  assert len(found) == 1, (directory, step, found)
  return {k[len("eval_loss/"):]: v for k, v in found[0].items() if k.startswith("eval_loss/")}


def expected_records(workdir: Path, suite: ml_collections.ConfigDict) -> list[tuple]:
  """What records.json must hold, rebuilt from the files of every run directory."""
  headline = naming.ema_name(suite.headline_ema)
  out = []
  for run_dir in sorted((workdir / "runs").iterdir()):
    match = RUN_NAME.match(run_dir.name)
    assert match, run_dir.name
    method, seed = match["method"], int(match["seed"])
    stored = json.loads((run_dir / "main" / "config.json").read_text())
    lr = stored["optimizer"]["schedule"]["peak_value"]
    assert stored["seed"] == seed
    if methods.REGISTRY[method].per_horizon:
      h = int(match["horizon"])
      out.append((method, "raw", h, lr, seed, evals_at(run_dir / "main", h)["raw"]))
      continue
    candidates = {"constant": ("raw", headline, "lawa"), "inverse_sqrt": (headline,),
                  "toy_isqrt": ("raw",)}[method]
    for h in HORIZONS:
      losses = evals_at(run_dir / "main", h)
      out += [(method, c, h, lr, seed, losses[c]) for c in candidates]
    if method != "constant":
      continue
    for shape, final in suite.wsd_variants:
      for h in HORIZONS:
        branch = run_dir / "branches" / f"{shape}_to{final:g}_{h}"
        # The tuning seed has every branch; a reporting seed the ones its columns chose.
        assert branch.exists() or seed != 0, branch
        if branch.exists():
          out.append((f"wsd_{shape}_{final:g}", "raw", h, lr, seed, evals_at(branch, h)["raw"]))
    rows = json.loads((run_dir / "posthoc" / "table.json").read_text())
    for h in HORIZONS:
      losses = [r["posthoc_loss"] for r in rows if r["step"] == h and r["target"] == "sigma_rel"]
      assert len(losses) == len(suite.posthoc_sigma_rels)
      out.append((method, "posthoc_best", h, lr, seed, min(losses)))
    merges = json.loads((run_dir / "merges.json").read_text())["losses"]
    assert set(merges) == {f"merge_{kind}_{k}" for k in suite.merge_last
                           for kind in ("uniform", "ema")}
    for name, by_h in merges.items():
      assert sorted(map(int, by_h)) == list(HORIZONS)
      out += [(method, name, int(h), lr, seed, v) for h, v in by_h.items()]
  return out


def test_records_are_the_runs_metrics_and_the_report_is_written(suite):
  workdir, config, report = suite
  records = stored_records(workdir)
  want = sorted(expected_records(workdir, config.suite))
  got = sorted(tuple(r) for r in records)
  assert got == want  # exact: records.json copies the floats of metrics.jsonl
  assert all(math.isfinite(r.loss) for r in records)
  assert {r.seed for r in records} == {0, 1}
  assert (workdir / "suite.json").exists() and (workdir / "timing.json").exists()
  for name in REPORT_FILES:
    assert (workdir / "report" / name).stat().st_size > 0, name
  for name in ("loss_vs_lr.png", "deltas.png", "anytime.png"):
    assert (workdir / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  table = json.loads((workdir / "report" / "table.json").read_text())
  assert {row["horizon_steps"] for row in table["rows"]} == set(HORIZONS)
  # Every evaluation of a reporting seed keeps its per-window loss sums: their total over the
  # windows' tokens is the loss the run recorded there; tuning-seed runs keep none.
  stored = json.loads((workdir / "records.json").read_text())
  tokens = np.asarray(stored["window_tokens"])
  windows = {tuple(w["key"]): np.asarray(w["sums"]) for w in stored["windows"]}
  reporting = [r for r in records if r.seed == 1 and r.candidate != "posthoc_best"]
  assert reporting and {k[4] for k in windows} == {1}
  for r in reporting:
    sums = windows[(r.method, r.candidate, r.horizon, r.peak_value, r.seed)]
    assert sums.shape == tokens.shape
    np.testing.assert_allclose(sums.sum() / tokens.sum(), r.loss, rtol=1e-5)
  deltas = (workdir / "report" / "deltas.csv").read_text().splitlines()
  assert {"method", "horizon_steps", "reporting_seeds", "delta", "se_seed", "se_eval", "df",
          "ci_low", "ci_high", "p_value", "p_adjusted", "margin", "verdict"} <= set(
              deltas[0].split(","))
  assert not any(",tie" in line for line in deltas)


def test_envelope_is_the_better_baseline_family_per_horizon(suite):
  workdir, _, report = suite
  records = stored_records(workdir)
  assert [row.horizon for row in report.rows] == list(HORIZONS)
  for row in report.rows:
    best = {}  # family -> (tuning-seed loss, lr) at its best LR for this horizon
    for family in ("cosine", "d2z"):
      curve = {r.peak_value: r.loss for r in records
               if r.method == family and r.horizon == row.horizon and r.seed == 0}
      assert len(curve) >= 2  # tuned over a grid
      lr = min(curve, key=curve.get)
      best[family] = (curve[lr], lr)
    family = min(best, key=lambda f: best[f][0])
    assert row.envelope_family == family
    assert row.envelope_lr == best[family][1]
    seed_losses = [r.loss for r in records if (r.method, r.candidate, r.horizon) == (
        family, "raw", row.horizon) and tuning.same_lr(r.peak_value, row.envelope_lr)]
    assert len(seed_losses) == 2  # the tuning seed and one fresh reporting seed
    reporting = [r.loss for r in records if (r.method, r.candidate, r.horizon, r.seed) == (
        family, "raw", row.horizon, 1) and tuning.same_lr(r.peak_value, row.envelope_lr)]
    # Reported numbers are on the reporting seed only (the tuning seed made the choice).
    np.testing.assert_allclose(row.envelope.mean, np.mean(reporting), rtol=1e-12)
    for cell in row.cells:
      np.testing.assert_allclose(cell.delta, cell.loss.mean - cell.reference.mean, atol=1e-12)
      assert cell.seeds == (1,)


def test_grid_too_low_is_extended(suite):
  workdir, config, report = suite
  s = config.suite
  grid = compare.initial_grid(s)
  low, high = min(grid), max(grid)
  on_grid = lambda lr: any(tuning.same_lr(lr, g) for g in grid)
  records = [r for r in stored_records(workdir) if r.seed == 0]
  # The initial grid is deliberately low: with 4-8 Adam steps the larger LR wins for every
  # column on the initial grid (per horizon for the baselines, by the mean over horizons for
  # the anytime methods), so each must have asked for one point above the grid.
  columns = {(r.method, r.candidate) for r in records}
  assert len(columns) == 11
  registry = methods.REGISTRY
  for method, candidate in sorted(columns):
    per_horizon = method in registry and registry[method].family
    for h in (HORIZONS if per_horizon else (None,)):
      initial = {}
      for r in records:
        if ((r.method, r.candidate) == (method, candidate) and h in (None, r.horizon)
            and on_grid(r.peak_value)):
          initial.setdefault(r.peak_value, []).append(r.loss)
      assert len(initial) == 2 and all(len(v) == (1 if h else 2) for v in initial.values())
      mean = {lr: np.mean(v) for lr, v in initial.items()}
      assert tuning.same_lr(min(mean, key=mean.get), high), (method, candidate, h, mean)
  # Every run (each baseline per horizon, each anytime method once) got exactly that point:
  # one factor step above the grid, nothing below it, nothing further (max_extensions=1).
  runs: dict[tuple[str, int | None], set[float]] = {}
  for r in records:
    run_method = r.method if r.method in registry else "constant"  # wsd_*: constant's branches
    runs.setdefault((run_method, r.horizon if registry[run_method].family else None),
                    set()).add(r.peak_value)
  assert sorted(runs) == sorted([(b, h) for b in ("cosine", "d2z") for h in HORIZONS]
                                + [("constant", None), ("inverse_sqrt", None),
                                   ("toy_isqrt", None)])
  for key, lrs in runs.items():
    assert len(lrs) == 3, (key, sorted(lrs))
    assert [tuning.same_lr(a, b) for a, b in zip(sorted(lrs), (low, high, high * s.lr_factor))
            ] == [True] * 3, (key, sorted(lrs))
  # The report tunes over the extended grid, and marks an optimum still on its edge.
  for column, choice in report.choices.items():
    for h, optimum in choice.optima.items():
      lrs = report.curves[column][h].lrs
      assert len(lrs) == 3, (column, h, lrs)
      assert optimum.at_edge == (tuning.same_lr(optimum.lr, lrs[0]) or
                                 tuning.same_lr(optimum.lr, lrs[-1])), (column, h)


def test_rerun_of_a_finished_suite_trains_nothing(suite, monkeypatch, tmp_path):
  source, config, report = suite
  workdir = copy_workdir(source, tmp_path / "w")
  runs_before = file_bytes((workdir / "runs").rglob("*"))
  records_before = (workdir / "records.json").read_bytes()
  table_before = {name: (workdir / "report" / name).read_bytes()
                  for name in ("table.json", "table.csv")}
  calls = count_training(monkeypatch)
  evaluated = []
  monkeypatch.setattr(compare.posthoc_eval, "run", lambda *a, **k: evaluated.append(a))
  monkeypatch.setattr(compare, "_merge", lambda *a, **k: evaluated.append(a))
  again = compare.run_suite(config, str(workdir))
  assert calls == [] and evaluated == []
  assert file_bytes((workdir / "runs").rglob("*")) == runs_before
  assert (workdir / "records.json").read_bytes() == records_before
  for name, content in table_before.items():
    assert (workdir / "report" / name).read_bytes() == content, name
  assert repr(again.rows) == repr(report.rows)  # repr: NaN fields (untested cells) compare


def test_workdir_written_before_a_suite_key_existed_is_resumed(suite, monkeypatch, tmp_path):
  """A suite.json without a key added later (suite or base) meant that key's default."""
  source, config, report = suite
  workdir = copy_workdir(source, tmp_path / "w")
  manifest = json.loads((workdir / "suite.json").read_text())
  del manifest["suite"]["max_batch_runs"]
  del manifest["base"]["train"]["clean_steps_before_save"]
  (workdir / "suite.json").write_text(json.dumps(manifest))
  calls = count_training(monkeypatch)
  monkeypatch.setattr(compare.posthoc_eval, "run", lambda *a, **k: calls.append(a))
  monkeypatch.setattr(compare, "_merge", lambda *a, **k: calls.append(a))
  assert repr(compare.run_suite(config, str(workdir)).rows) == repr(report.rows)
  assert calls == []
  # A key that differs from its default is still a different suite, and is named.
  with pytest.raises(ValueError, match=r"holds a different suite \(differing keys: "
                                       r"suite\.max_batch_runs\)"):
    compare.run_suite(suite_config(max_batch_runs=5), str(workdir))


def test_lr_grids_set_a_methods_starting_grid():
  config = suite_config(lr_grids={"cosine": [1e-2, 3e-3], "constant": [5e-3]})
  compare.validate(config)
  s = config.suite
  assert compare.initial_grid(s, "cosine") == (3e-3, 1e-2)
  assert compare.initial_grid(s, "constant") == (5e-3,)
  assert compare.initial_grid(s, "d2z") == compare.initial_grid(s)  # the shared log grid


def test_no_method_name_is_compared_outside_the_registry():
  """The planner, tuner and report ask the method objects; only methods.py knows names."""
  root = Path(compare.__file__).resolve().parents[1]
  names = sorted(methods.REGISTRY)
  pattern = re.compile(r"(==|!=|\bin)\s*[\(\[]?\s*[\"'](" + "|".join(map(re.escape, names))
                       + r")[\"']")
  found = []
  for path in sorted(root.rglob("*.py")):
    # methods.py is the registry; branches.py's ``mode="wsd_s"`` is the branch command's mode
    # (the main run adopts the decayed state), not a suite method; the labs have no suite.
    if path.name in ("methods.py", "branches.py") or "theory" in path.parts:
      continue
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        found.append(f"{path.relative_to(root)}:{number}: {line.strip()}")
  assert not found, "\n".join(found)


def test_interrupted_suite_resumes_only_what_is_missing(suite, monkeypatch, tmp_path):
  source, config, _ = suite
  workdir = copy_workdir(source, tmp_path / "w")
  want = {record_key(r): r.loss for r in stored_records(source)}
  # 1. A tuning-seed constant run killed between its checkpoints at 6 and 8: its last
  # checkpoint, the log after 6, its decay branches and its post-hoc/merge results are gone.
  constant = sorted(p for p in (workdir / "runs").iterdir()
                    if p.name.startswith("constant_") and p.name.endswith("_s0"))[0]
  main = constant / "main"
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps() == [2, 3, 4, 6, 8]
  shutil.rmtree(main / "8")
  kept = [r for r in loop.read_metrics(main) if r["step"] <= 6]
  (main / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
  for path in ("branches", "posthoc"):
    shutil.rmtree(constant / path)
  (main / "eval_windows.json").unlink(missing_ok=True)
  (constant / "merges.json").unlink()
  # 2. A reporting-seed baseline (seed 1) whose directory was never written.
  baseline = sorted(p for p in (workdir / "runs").iterdir()
                    if p.name.startswith("d2z_8_") and p.name.endswith("_s1"))[0]
  shutil.rmtree(baseline)
  (workdir / "records.json").unlink()

  calls = count_training(monkeypatch)
  compare.run_suite(config, str(workdir))
  trained = Counter(name for group in calls for name in group)
  assert sorted(trained) == sorted(
      [baseline.name, constant.name] + [f"{constant.name}/linear_to0_{h}" for h in HORIZONS])
  assert set(trained.values()) == {1}
  assert checkpoint.CheckpointStore(main, read_only=True).all_steps() == [2, 3, 4, 6, 8]
  got = {record_key(r): r.loss for r in stored_records(workdir)}
  assert got.keys() == want.keys()
  differing = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
  # Retrained runs in smaller vmapped groups: equal to float32 rounding (bitwise where the
  # compiled program is the same).
  np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], rtol=2e-6,
                             err_msg=str(differing))


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("overrides, message", [
    (dict(suite={"baselines": ["cosine", "step"]}), r"^suite\.baselines: unknown method 'step'"),
    (dict(suite={"methods": ["constant", "adam"]}), r"^suite\.methods: unknown method 'adam'"),
    (dict(suite={"methods": ["constant", "cosine"]}), r"^suite\.methods: 'cosine' is a baseline"),
    (dict(suite={"max_seeds": 0}), r"^suite\.max_seeds must be an integer >= suite\.seeds"),
    (dict(suite={"primary": ["constant", "ema_7"]}), r"^suite\.primary must be \[method, "),
    (dict(suite={"executor": {"name": "k8s"}}), r"^suite\.executor\.name: 'k8s' is not an engine"),
    (dict(suite={"base_steps": 1}), r"^suite\.base_steps must be an integer >= 2, got 1$"),
    (dict(suite={"seeds": 0}), r"^suite\.seeds must be a positive integer, got 0$"),
    (dict(suite={"lr_factor": 1.0}), r"^suite\.lr_centre must be > 0 and suite\.lr_factor > 1"),
    (dict(suite={"checkpoints_per_base": 3}),
     r"^suite\.checkpoints_per_base \(3\) must divide suite\.base_steps \(4\)"),
    (dict(suite={"headline_ema": 7.0}), r"^suite\.headline_ema \(7\.0\) must be one of"),
    (dict(suite={"wsd_variants": [["../main", 0.0]]}),
     r"^suite\.wsd_variants entries are \[shape, final_fraction\] with shape in"),
    (dict(suite={"lr_grids": {"cosin": [1e-3]}}),
     r"^suite\.lr_grids: 'cosin' is not one of the suite's trained methods"),
    (dict(suite={"lr_grids": {"cosine": [1e-3, 0.0]}}),
     r"^suite\.lr_grids\.cosine must be a non-empty list of positive learning rates"),
    (dict(base={"train.batch_size": 0}), r"^train\.batch_size must be a positive integer"),
])
def test_bad_suite_config_fails_in_one_line_before_any_file(overrides, message, tmp_path,
                                                            monkeypatch):
  config = suite_config(**overrides.get("suite", {}))
  config.base.unlock()
  config.base.update_from_flattened_dict(overrides.get("base", {}))
  calls = count_training(monkeypatch)
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=message) as error:
    compare.run_suite(config, str(workdir))
  assert "\n" not in str(error.value)
  assert not workdir.exists() and calls == []


def test_workdir_of_a_different_suite_is_refused_untouched(suite, monkeypatch, tmp_path):
  source, _, _ = suite
  workdir = tmp_path / "w"
  workdir.mkdir()
  shutil.copy(source / "suite.json", workdir / "suite.json")
  before = file_bytes(workdir.rglob("*"))
  calls = count_training(monkeypatch)
  with pytest.raises(ValueError, match=r"holds a different suite") as error:
    compare.run_suite(suite_config(lr_points=3), str(workdir))
  assert "\n" not in str(error.value) and str(workdir) in str(error.value)
  assert file_bytes(workdir.rglob("*")) == before and calls == []


def test_second_stage_trains_more_seeds_for_undecided_cells_only(tmp_path):
  """seeds=2, max_seeds=3: after look 1, every undecided cell's configuration (and its
  envelope's) is trained on seed 3, nothing else is; the report holds those cells at look 2
  with 3 seeds and the level split between the looks; a re-run trains nothing."""
  config = suite_config(multipliers=[1], methods=["constant"], baselines=["cosine"],
                        max_extensions=0, seeds=2, max_seeds=3, wsd_variants=[],
                        posthoc_sigma_rels=[], merge_last=[])
  report = compare.run_suite(config, str(tmp_path))
  stored = json.loads((tmp_path / "records.json").read_text())
  assert stored["stages"] == dict(first=[1, 2], second=[3], looks=2)
  names = {p.name for p in (tmp_path / "runs").iterdir()}
  third = {n for n in names if n.endswith("_s3")}
  cells = [c for c in report.cells if c.role in ("primary", "secondary")]
  # A cell undecided at look 1 gets seed 3 and its verdict at look 2 (3 seeds); a decided one
  # keeps look 1 (2 seeds). The level is alpha / 2 at both looks (planned before the data).
  looked_twice = [c for c in cells if c.look == 2]
  assert stored["second_stage_runs"] == len(third) > 0
  assert looked_twice, "a 4-step tiny suite leaves cells undecided at look 1"
  for c in cells:
    assert c.level == pytest.approx(config.suite.alpha / 2)
    if c.look == 2:
      assert c.seeds == (1, 2, 3)
    else:
      assert c.seeds == (1, 2) and c.verdict != "undecided"
  # Seed 3 exactly for the runs the undecided cells read: the constant run at the cell's LR
  # (one LR for all horizons) and the envelope's cosine run at its horizon and LR.
  assert third == {name for row in report.rows for c in row.cells if c.tested and c.look == 2
                   for name in (plan.run_name("constant", c.lr, 3),
                                plan.run_name(row.envelope_family, row.envelope_lr, 3,
                                              row.horizon))}
  before = file_bytes((tmp_path / "runs").rglob("metrics.jsonl"))
  compare.run_suite(config, str(tmp_path))
  assert file_bytes((tmp_path / "runs").rglob("metrics.jsonl")) == before
