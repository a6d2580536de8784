"""The verdict report on synthetic records: tuning vs reporting seeds, families, two looks,
windows, oracle columns, deltas.csv, Markdown, terminal summary, plots."""

import csv
import io
import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from anytime.experiments import plots, report_text, stats, tuning, verdict
from anytime.experiments.tuning import Column, Record

LRS = tuning.log_grid(3e-3, 3)
HORIZONS = (100, 200, 400)
FAMILIES = ("cosine", "d2z")
FIRST, SECOND = (1, 2, 3), (4, 5, 6)
SEED_SHIFT = {0: 0.0, 1: 0.01, 2: -0.01, 3: 0.02, 4: -0.02, 5: 0.005, 6: -0.005}
FACTS = verdict.SuiteFacts(base_steps=100, tokens_per_step=1000, non_embedding_params=5000,
                           total_params=9000, eval_tokens=3200, runs=90, second_stage_runs=6)
# constant+ema_25 minus the envelope per seed: a clear win at 1x; undecided on 3 seeds and a
# win on 6 at 2x; equivalent at 4x.
EMA_OFFSET = {100: {s: -0.05 + 0.001 * (s % 3) for s in range(7)},
              200: {0: 0.0, 1: -0.020, 2: 0.000, 3: -0.010, 4: -0.015, 5: -0.012, 6: -0.013},
              400: {0: 0.0, 1: 0.001, 2: -0.001, 3: 0.0005, 4: 0.0, 5: 0.0, 6: 0.0}}
JITTER = {0: 0.0, 1: 0.002, 2: -0.001, 3: -0.001, 4: 0.001, 5: -0.002, 6: 0.001}
WINDOWS, DOCS = 32, np.repeat(np.arange(8), 4)
TOKENS = np.full(WINDOWS, 100.0)


def _base(h, lr):
  return 2.0 - 0.1 * math.log2(h / 100) + 0.1 * math.log(lr / LRS[1]) ** 2


def _loss(method, candidate, h, lr, seed):
  shift = SEED_SHIFT[seed]
  if method == "cosine":
    return _base(h, lr) + shift
  if method == "d2z":  # better than cosine only at the longest horizon
    return _base(h, lr) + shift + (-0.02 if h == 400 else 0.01) + JITTER[seed]
  envelope = _base(h, LRS[1]) + shift - (0.02 if h == 400 else 0.0)
  if candidate == "ema_25":
    return _base(h, lr) - _base(h, LRS[1]) + envelope + EMA_OFFSET[h][seed]
  if candidate == "posthoc_best":
    return _base(h, lr) + shift - 0.03
  # constant raw: a loss of 0.05, its best LR on the grid's top edge
  return envelope + 0.05 - 0.01 * math.log(lr / LRS[1]) + JITTER[seed]


COLUMNS = (("cosine", "raw"), ("d2z", "raw"), ("constant", "ema_25"), ("constant", "raw"),
           ("constant", "posthoc_best"))


def _records(seeds=FIRST + SECOND):
  chosen = {("constant", "raw"): LRS[2]}
  out = []
  for method, candidate in COLUMNS:
    for h in HORIZONS:
      out += [Record(method, candidate, h, lr, 0, _loss(method, candidate, h, lr, 0))
              for lr in LRS]
      lr = chosen.get((method, candidate), LRS[1])
      out += [Record(method, candidate, h, lr, s, _loss(method, candidate, h, lr, s))
              for s in seeds]
  return out


def _windows(records, skip=()):
  rng = np.random.default_rng(0)
  return {(r.method, r.candidate, r.horizon, r.peak_value, r.seed):
          r.loss * TOKENS + rng.normal(0, 0.01, WINDOWS)
          for r in records if r.seed != 0 and (r.method, r.candidate) not in skip}


PRIMARY = Column("constant", "ema_25")  # the suite's default primary comparison


def _report(stages=verdict.Stages(FIRST, SECOND), skip=(), **kwargs):
  records = _records(stages.first + stages.second)
  kwargs = dict(dict(windows=_windows(records, skip), window_tokens=TOKENS,
                     window_documents=DOCS, stages=stages,
                     oracle_columns=(Column("constant", "posthoc_best"),),
                     primary=PRIMARY), **kwargs)
  return verdict.build_report(records, FACTS, tuning_seeds=0, families=FAMILIES,
                              per_horizon_methods=FAMILIES, **kwargs)


def _cell(report, horizon, method, candidate):
  row = next(r for r in report.rows if r.horizon == horizon)
  return next(c for c in row.cells if c.column == Column(method, candidate))


def test_choices_on_the_tuning_seed_numbers_on_reporting_seeds():
  report = _report()
  assert [r.envelope_family for r in report.rows] == ["cosine", "cosine", "d2z"]
  assert [r.tokens_per_param for r in report.rows] == [20.0, 40.0, 80.0]
  assert report.rows[0].envelope.num_seeds == 3  # first-stage seeds, not the tuning seed
  assert report.rows[0].envelope.mean == pytest.approx(
      np.mean([_loss("cosine", "raw", 100, LRS[1], s) for s in FIRST]))
  assert report.rows[0].envelope_tuning_loss == pytest.approx(_base(100, LRS[1]))
  assert all(0 not in c.seeds for c in report.cells)
  ema = _cell(report, 100, "constant", "ema_25")
  assert ema.seeds == FIRST and ema.delta == pytest.approx(np.mean(
      [EMA_OFFSET[100][s] for s in FIRST]))
  with pytest.raises(ValueError, match="tuning seeds"):
    _report(stages=verdict.Stages((0, 1, 2)))


def test_verdicts_families_and_two_looks():
  look1 = _report(stages=verdict.Stages(FIRST, ()))
  ema = [_cell(look1, h, "constant", "ema_25") for h in HORIZONS]
  assert [c.verdict for c in ema] == ["win", "undecided", "equivalent"]
  assert {c.role for c in ema} == {"primary"} and {c.level for c in ema} == {0.025}
  # Holm within the primary family only: three hypotheses.
  assert [c.p_adjusted for c in ema] == pytest.approx(list(stats.holm([c.p_value for c in ema])))
  raw = _cell(look1, 100, "constant", "raw")
  assert raw.verdict == "loss" and raw.edge and raw.role == "secondary"
  secondary = [c for c in look1.cells if c.role == "secondary"]
  assert [c.p_adjusted for c in secondary] == pytest.approx(
      list(stats.holm([c.p_value for c in secondary])))
  assert _cell(look1, 100, "cosine", "raw").verdict == "reference"
  undecided = verdict.undecided_cells(look1)
  assert [(u.column, u.horizon) for u in undecided] == [(Column("constant", "ema_25"), 200)]
  assert undecided[0].envelope_family == "cosine" and undecided[0].seeds == FIRST
  look2 = _report()
  second = _cell(look2, 200, "constant", "ema_25")
  assert second.look == 2 and second.seeds == FIRST + SECOND and second.verdict == "win"
  # Look-1 verdicts are final: the 1x cell keeps its 3 seeds.
  assert _cell(look2, 100, "constant", "ema_25").seeds == FIRST
  assert verdict.undecided_cells(look2) == []
  assert "tie" not in json.dumps(report_text.json_dict(look2))


def test_one_planned_look_uses_the_full_level():
  report = _report(stages=verdict.Stages(FIRST, (), looks=1))
  assert {c.level for c in report.cells} == {0.05}
  assert verdict.undecided_cells(report) == []  # no second look was planned
  with pytest.raises(ValueError, match="looks=2"):
    verdict.Stages(FIRST, SECOND, looks=1)


def test_oracle_column_gets_an_interval_and_no_verdict():
  report = _report()
  oracle = _cell(report, 100, "constant", "posthoc_best")
  assert oracle.verdict == "oracle" and oracle.role == "oracle" and math.isnan(oracle.p_adjusted)
  assert oracle.seeds == FIRST + SECOND and math.isfinite(oracle.ci_low)
  assert "(oracle)" in report_text.cells_markdown(report)


def test_clustered_eval_error_and_missing_windows():
  report = _report(skip=(("constant", "raw"),))
  ema = _cell(report, 400, "constant", "ema_25")
  records = _records()
  windows = _windows(records)
  env_lr = report.rows[2].envelope_lr
  a = [windows[("constant", "ema_25", 400, LRS[1], s)] for s in FIRST]
  b = [windows[("d2z", "raw", 400, env_lr, s)] for s in FIRST]
  expected = stats.clustered_delta_error(a, b, TOKENS, DOCS)
  assert ema.eval_status == "clustered" and ema.eval_clusters == 8
  assert ema.se_eval == pytest.approx(expected.se)
  assert ema.se == pytest.approx(math.hypot(ema.se_seed, ema.se_eval))
  raw = _cell(report, 100, "constant", "raw")
  assert raw.eval_status == "missing" and math.isnan(raw.se_eval)
  assert raw.df == pytest.approx(2.0)  # seed error only
  assert "no window data" in report_text.conclusions(report)
  assert "missing: seed error only" in report_text.cells_markdown(report)
  assert report.window_documents == 8 and report.window_count == WINDOWS


def test_deltas_csv_markdown_and_json_come_from_the_same_cells():
  report = _report()
  rows = list(csv.DictReader(io.StringIO(report_text.csv_text(report_text.delta_rows(report)))))
  required = {"method", "horizon_steps", "reporting_seeds", "delta", "se_seed", "se_eval", "df",
              "ci_low", "ci_high", "p_value", "p_adjusted", "margin", "verdict"}
  assert required <= set(rows[0])
  assert len(rows) == len(report.cells)
  ema = next(r for r in rows if r["column"] == "constant+ema_25" and r["horizon_steps"] == "200")
  cell = _cell(report, 200, "constant", "ema_25")
  assert float(ema["delta"]) == pytest.approx(cell.delta) and ema["verdict"] == "win"
  assert ema["reporting_seeds"] == "6" and ema["look"] == "2"
  table = report_text.markdown_table(report)
  assert f"{cell.delta:+.4f} [{cell.ci_low:+.4f}, {cell.ci_high:+.4f}] **win** (look 2)" in table
  assert "| 1x | 100 | 100,000 | 20 (1x) |" in table
  notes = report_text.table_notes(report)
  assert "holm" in notes and "per look" in notes and "ONE LR for all horizons" in notes
  payload = json.loads(json.dumps(report_text.json_dict(report)))  # strict JSON: no NaN
  assert payload["rule"]["level_per_look"] == 0.025 and payload["rule"]["tuning_seeds"] == [0]
  text = report_text.conclusions(report)
  assert "second stage cost 6 runs of 90" in text and "Primary (constant+ema_25)" in text


def test_terminal_summary_fits_100_columns():
  report = _report()
  text = verdict.terminal_summary(report)
  lines = text.splitlines()
  assert max(len(line) for line in lines) <= 100
  assert lines[0].startswith("Deltas to the envelope")
  assert any(line.startswith("constant+ema_25 *") for line in lines)
  assert "win²" in text and "equiv" in text and "report/deltas.csv" in text
  narrow = verdict.terminal_summary(report, width=60)
  assert max(len(line) for line in narrow.splitlines()) <= 60
  assert narrow.count("method ") == 3  # one block per horizon


def test_plots_and_files(tmp_path):
  curve = {"raw": [(s, 2.5 - 0.1 * math.log(s)) for s in range(10, 410, 10)],
           "ema_25": [(s, 2.45 - 0.1 * math.log(s)) for s in range(10, 410, 10)]}
  report = _report(anytime_curve=curve)
  for figure in (plots.plot_lr_curves(report), plots.plot_deltas(report),
                 plots.plot_anytime(report)):
    assert isinstance(figure, Figure)
  paths = verdict.write_report(tmp_path / "report", report)
  assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(paths)
  assert {"deltas.csv", "deltas.png", "anytime.png", "loss_vs_lr.png", "table.md"} <= set(paths)
  assert paths["deltas.png"].read_bytes()[:4] == b"\x89PNG"
  assert "What this suite can and cannot conclude" in paths["table.md"].read_text()
  without = verdict.write_report(tmp_path / "plain", _report())
  assert "anytime.png" not in without


def test_input_errors():
  with pytest.raises(ValueError, match="non_embedding_params"):
    verdict.SuiteFacts(**{**FACTS.__dict__, "non_embedding_params": 0})
  with pytest.raises(ValueError, match="margin"):
    _report(margin=0.0)
  with pytest.raises(ValueError, match="multiplicity"):
    _report(multiplicity="fdr")
  with pytest.raises(ValueError, match="window_tokens"):
    _report(window_tokens=None)
  with pytest.raises(ValueError, match="in both"):
    verdict.Stages((1, 2), (2, 3))


def test_large_ratios_print_without_exponents():
  facts = verdict.SuiteFacts(**{**FACTS.__dict__, "non_embedding_params": 10})
  records = _records()
  report = verdict.build_report(records, facts, tuning_seeds=0, families=FAMILIES,
                                per_horizon_methods=FAMILIES, primary=PRIMARY)
  assert "| 40,000 (2,000x) |" in report_text.markdown_table(report).splitlines()[4]
  assert {c.eval_status for c in report.cells if c.tested} == {"missing"}
  assert report.stages.first == FIRST + SECOND and report.stages.looks == 1
