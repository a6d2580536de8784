"""The verdict table on synthetic records: envelope, ties, edge flags, formatting, files."""

import csv
import io
import json
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from anytime.experiments import tuning, verdict
from anytime.experiments.tuning import Column, Record

LRS = tuning.log_grid(3e-3, 3)
HORIZONS = (100, 200, 400)
SEED_SHIFT = {0: 0.0, 1: 0.01, 2: -0.01}  # shared by every configuration of a seed
FACTS = verdict.SuiteFacts(base_steps=100, tokens_per_step=1000, non_embedding_params=5000,
                           total_params=9000, eval_tokens=8192, tuning_seed=0,
                           eval_loss_std={h: 2.0 for h in HORIZONS})


def _base(h, lr):
  return 2.0 - 0.1 * math.log2(h / 100) + 0.1 * math.log(lr / LRS[1]) ** 2


# Per horizon: offset of constant+ema_25 from cosine per seed (a clear win at 100, ties after).
EMA_OFFSET = {100: {0: -0.050, 1: -0.048, 2: -0.052},
              200: {0: -0.003, 1: 0.007, 2: -0.015},
              400: {0: -0.020, 1: -0.010, 2: -0.032}}


def _loss(method, candidate, h, lr, seed):
  shift = SEED_SHIFT[seed]
  if method == "cosine":
    return _base(h, lr) + shift
  if method == "d2z":  # better than cosine only at the longest horizon
    return _base(h, lr) + shift + (-0.02 if h == 400 else 0.01)
  if candidate == "ema_25":
    return _base(h, lr) + shift + EMA_OFFSET[h][seed]
  return 2.1 - 0.1 * math.log2(h / 100) - 0.01 * math.log(lr / LRS[1]) + shift  # best: top LR


def _records(seeds=(0, 1, 2)):
  columns = (("cosine", "raw"), ("d2z", "raw"), ("constant", "ema_25"), ("constant", "raw"))
  chosen = {("constant", "raw"): LRS[2]}
  out = []
  for method, candidate in columns:
    for h in HORIZONS:
      for lr in LRS:
        out.append(Record(method, candidate, h, lr, 0, _loss(method, candidate, h, lr, 0)))
      lr = chosen.get((method, candidate), LRS[1])
      out += [Record(method, candidate, h, lr, s, _loss(method, candidate, h, lr, s))
              for s in seeds if s != 0]
  return out


def _cell(report, horizon, method, candidate):
  row = next(r for r in report.rows if r.horizon == horizon)
  return next(c for c in row.cells if c.column == Column(method, candidate))


def test_envelope_family_and_tokens_per_param():
  report = verdict.build_report(_records(), FACTS)
  assert [r.envelope_family for r in report.rows] == ["cosine", "cosine", "d2z"]
  assert [r.tokens_per_param for r in report.rows] == [20.0, 40.0, 80.0]
  assert [r.chinchilla for r in report.rows] == [1.0, 2.0, 4.0]
  assert report.rows[2].envelope.mean == pytest.approx(_base(400, LRS[1]) - 0.02)
  assert report.rows[0].envelope.num_seeds == 3


def test_wins_ties_losses_and_edges():
  report = verdict.build_report(_records(), FACTS)
  ema = [_cell(report, h, "constant", "ema_25") for h in HORIZONS]
  assert [c.verdict for c in ema] == ["win", "tie", "tie"]
  assert all(c.delta.paired and c.delta.num_seeds == 3 for c in ema)
  assert ema[0].delta.mean == pytest.approx(-0.05)
  assert {c.lr for c in ema} == {LRS[1]} and not any(c.edge for c in ema)
  raw = _cell(report, 100, "constant", "raw")
  assert raw.verdict == "loss" and raw.edge and raw.lr == LRS[2]
  assert report.choices[Column("constant", "raw")].optima[100].edges == {"high"}


def test_markdown_formatting():
  report = verdict.build_report(_records(), FACTS)
  table = verdict.markdown_table(report)
  lines = table.splitlines()
  assert lines[0].startswith("| horizon | steps | tokens | tokens/param (Chinchilla) | envelope")
  assert len(lines) == 2 + len(HORIZONS)
  first = lines[2]
  assert "| 1x | 100 | 100,000 | 20 (1x) |" in first
  assert "cosine lr 0.003 |" in first
  ema = _cell(report, 100, "constant", "ema_25")
  assert f"{ema.loss.mean:.4f} ± {ema.loss.se:.4f} (-0.0500 ± {ema.delta.se:.4f} win) lr 0.003" \
      in first
  assert "tie) lr 0.003 |" in lines[3]
  assert "loss) lr 0.00424" + verdict.EDGE_MARK in first
  notes = verdict.table_notes(report)
  assert "ONE LR for all horizons" in notes and "constant+ema_25" in notes
  curves = verdict.lr_curves_markdown(report)
  assert curves.count("| constant+ema_25 |") == len(HORIZONS)
  assert f"**{_loss('cosine', 'raw', 100, LRS[1], 0):.4f}**" in curves


def test_conclusions_count_ties_and_compare_eval_error_to_seed_noise():
  report = verdict.build_report(_records(), FACTS)
  text = verdict.conclusions(report)
  cells = [c for r in report.rows for c in r.cells
           if not (c.column.method == r.envelope_family and c.column.candidate == "raw")]
  ties = sum(c.verdict == "tie" for c in cells)
  assert f"Of {len(cells)} deltas to the envelope, {ties} are ties" in text
  assert "Seeds per configuration: 3" in text
  assert "a lower bound" in text  # per-token eval error without windows
  assert f"{2.0 / math.sqrt(8192):.4f} nats" in text
  assert "stayed on a grid edge" in text


def test_one_seed_means_no_noise_floor_and_only_ties():
  report = verdict.build_report(_records(seeds=(0,)), FACTS)
  assert {c.verdict for r in report.rows for c in r.cells} == {"tie"}
  assert "no noise floor" in verdict.conclusions(report)


def test_tuning_seed_can_be_left_out():
  report = verdict.build_report(_records(), FACTS, include_tuning_seed=False)
  assert report.rows[0].envelope.num_seeds == 2
  assert _cell(report, 100, "constant", "ema_25").loss.num_seeds == 2


def test_window_sampling_error_is_preferred():
  facts = verdict.SuiteFacts(**{**FACTS.__dict__, "window_losses": {100: [1.9, 2.0, 2.1, 2.0]}})
  report = verdict.build_report(_records(), facts)
  assert report.sampling_error.kind == "windows"
  with pytest.raises(ValueError, match="non_embedding_params"):
    verdict.SuiteFacts(**{**FACTS.__dict__, "non_embedding_params": 0})


def test_delta_sampling_error_is_reported_against_the_seed_noise_of_deltas():
  report = verdict.build_report(_records(), FACTS)
  assert report.delta_sampling_error is None
  assert "error of a delta (two models on the same windows) was not measured" in (
      verdict.conclusions(report))
  a = [1.9, 2.0, 2.1, 2.0, 1.8, 2.2]
  tiny = [x + 0.001 * (-1) ** i for i, x in enumerate(a)]
  facts = verdict.SuiteFacts(**{**FACTS.__dict__, "paired_window_losses": {100: (a, tiny)}})
  report = verdict.build_report(_records(), facts)
  assert report.delta_sampling_error.kind == "paired windows"
  assert report.delta_sampling_error.value == pytest.approx(
      np.std(np.subtract(a, tiny), ddof=1) / math.sqrt(len(a)))
  assert "x the seed noise of a delta" in verdict.conclusions(report)
  assert "well below it." in verdict.conclusions(report)
  big = [x + 0.5 * (-1) ** i for i, x in enumerate(a)]
  facts = verdict.SuiteFacts(**{**FACTS.__dict__, "paired_window_losses": {100: (a, big)}})
  text = verdict.conclusions(verdict.build_report(_records(), facts))
  assert "NOT well below it" in text
  assert verdict.json_dict(verdict.build_report(_records(), facts))[
      "delta_eval_sampling_error"]["kind"] == "paired windows"


def test_csv_json_and_files(tmp_path):
  report = verdict.build_report(_records(), FACTS)
  rows = list(csv.DictReader(io.StringIO(verdict.csv_text(report))))
  assert len(rows) == len(HORIZONS) * (1 + len(report.columns))
  assert rows[0]["column"] == "envelope" and rows[0]["method"] == "cosine"
  payload = json.loads(json.dumps(verdict.json_dict(report)))  # strict JSON: no NaN
  assert payload["rows"][0]["delta_se"] is None
  assert len(payload["lr_curves"]) == len(HORIZONS) * len(report.columns)
  assert isinstance(verdict.plot_lr_curves(report), Figure)
  assert isinstance(verdict.plot_loss_vs_tokens(report), Figure)
  paths = verdict.write_report(tmp_path / "report", report)
  assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(paths)
  assert paths["loss_vs_lr.png"].read_bytes()[:4] == b"\x89PNG"
  assert "What this suite can and cannot conclude" in paths["table.md"].read_text()


def test_large_ratios_print_without_exponents():
  facts = verdict.SuiteFacts(**{**FACTS.__dict__, "non_embedding_params": 10})
  line = verdict.markdown_table(verdict.build_report(_records(), facts)).splitlines()[4]
  assert "| 40,000 (2,000x) |" in line


def test_tie_threshold_is_configurable_and_stated():
  report = verdict.build_report(_records(), FACTS, threshold=100.0)
  assert _cell(report, 100, "constant", "ema_25").verdict == "tie"
  assert "|delta| < 100 s.e." in verdict.table_notes(report)
