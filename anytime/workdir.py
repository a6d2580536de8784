"""Every path of a run, a branch and a suite, and the lineage record of a branch: defined once.

A run's workdir::

    WORKDIR/main/                   the main branch: Orbax steps, config.json, metrics.jsonl,
                                    tensorboard/, snapshots/, eval_windows.json, lineage.json
                                    (WSD-S adoptions), .lock
    WORKDIR/branches/<name>/        a decay branch: its steps, metrics.jsonl, lineage.json
    WORKDIR/posthoc/table.json      post-hoc reconstruction (``anytime.main posthoc``)
    WORKDIR/merges.json             checkpoint merges (the suite)

A suite's workdir holds ``suite.json`` (its manifest), ``runs/<run name>/`` (one run workdir
each, laid out as above), ``records.json``, ``timing.json`` and ``report/``. Every other module
asks this one for a path; none spells a file name itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from etils import epath

from anytime import checkpoint

MAIN = "main"
BRANCHES = "branches"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
SNAPSHOTS = "snapshots"
LINEAGE = "lineage.json"
EVAL_WINDOWS = "eval_windows.json"
PREVIOUS = "previous"  # previous-<n>/: an earlier attempt's files, set aside by --start-over

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")

Path = epath.Path


# ---------------------------------------------------------------------------- a run


def main_dir(workdir: str | Path) -> Path:
  """``workdir/main``: the main branch of a run."""
  return epath.Path(workdir) / MAIN


def check_name(name: str, field: str = "branch name (--name)") -> str:
  """A branch or run name is one safe path component: it can only ever name a folder directly
  below its parent (no ``/``, ``..``, leading dot or dash, at most 100 characters)."""
  if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
    raise ValueError(f"{field} must be letters, digits, '.', '_' or '-' (one folder name, not "
                     f"starting with '.' or '-', no '..', at most 100 characters), got {name!r}")
  return name


def check_branch_name(name: str) -> str:
  """A branch name: one folder name under ``WORKDIR/branches/``."""
  return check_name(name)


def branch_dir(workdir: str | Path, name: str) -> Path:
  """``workdir/branches/<name>``; ValueError for a name that is not one safe path component."""
  return epath.Path(workdir) / BRANCHES / check_branch_name(name)


def config_file(directory: str | Path) -> Path:
  """The resolved config a run directory was trained with."""
  return epath.Path(directory) / CONFIG


def metrics_file(directory: str | Path) -> Path:
  return epath.Path(directory) / METRICS


def tensorboard_dir(directory: str | Path) -> Path:
  return epath.Path(directory) / TENSORBOARD


def snapshots_dir(directory: str | Path) -> Path:
  """Post-hoc snapshots of a run directory (``main/snapshots``)."""
  return epath.Path(directory) / SNAPSHOTS


def eval_windows_file(directory: str | Path) -> Path:
  """Per-window validation loss sums of a run directory's evaluations at chosen steps."""
  return epath.Path(directory) / EVAL_WINDOWS


def previous_dir(directory: str | Path, k: int) -> Path:
  return epath.Path(directory) / f"{PREVIOUS}-{k}"


def posthoc_dir(workdir: str | Path) -> Path:
  return epath.Path(workdir) / "posthoc"


def posthoc_table(workdir: str | Path) -> Path:
  """The rows ``experiments.posthoc_eval`` writes (and the suite reads)."""
  return posthoc_dir(workdir) / "table.json"


def merges_file(workdir: str | Path) -> Path:
  """Losses of checkpoint merges, ``{name: {horizon: loss}}``."""
  return epath.Path(workdir) / "merges.json"


# ---------------------------------------------------------------------------- lineage


def lineage_file(directory: str | Path) -> Path:
  return epath.Path(directory) / LINEAGE


def branch_lineage(*, parent_step: int, cooldown_steps: int, shape: str, final_fraction: float,
                   schedule: Mapping[str, Any], finished: bool,
                   config_hash: str | None = None) -> dict[str, Any]:
  """The lineage record of a decay branch: where it starts, its decay, whether it finished."""
  record = dict(parent=MAIN, parent_step=int(parent_step), cooldown_steps=int(cooldown_steps),
                shape=shape, final_fraction=float(final_fraction),
                end_step=int(parent_step) + int(cooldown_steps), schedule=dict(schedule),
                finished=bool(finished))
  if config_hash is not None:
    record["config_hash"] = config_hash
  return record


def write_lineage(directory: str | Path, record: Mapping[str, Any]) -> None:
  checkpoint.write_json(lineage_file(directory), record)


def read_lineage(directory: str | Path) -> dict[str, Any] | None:
  return checkpoint.read_json(lineage_file(directory))


def branch_finished(workdir: str | Path, name: str) -> bool:
  record = read_lineage(branch_dir(workdir, name))
  return bool(record and record.get("finished"))


# ---------------------------------------------------------------------------- a suite


class SuitePaths:
  """The files of a suite's workdir."""

  def __init__(self, root: str | Path):
    self.root = epath.Path(root)
    self.manifest = self.root / "suite.json"
    self.records = self.root / "records.json"
    self.timing = self.root / "timing.json"
    self.report = self.root / "report"
    self.runs = self.root / "runs"

  def run(self, name: str) -> Path:
    """The workdir of one of the suite's runs (a run workdir: ``main/``, ``branches/``)."""
    return self.runs / check_name(name, field="suite run name")
