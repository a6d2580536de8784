"""A small comparison suite in its own process (tests/test_plan.py signals it)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
sys.path.insert(0, os.path.dirname(__file__))

import ml_collections  # noqa: E402

from anytime.experiments import compare  # noqa: E402
import _tiny  # noqa: E402


def config() -> ml_collections.ConfigDict:
  return _tiny.tiny_suite(
      {"train.log_every": 1}, base_steps=40, multipliers=[1, 2], warmup_steps=2,
      lr_centre=3e-3, lr_points=2, max_extensions=0, tuning_seeds=[0], seeds=1, max_seeds=1,
      baselines=["cosine"], methods=["constant"], wsd_variants=[], posthoc_sigma_rels=[],
      merge_last=[], checkpoints_per_base=4, snapshots_per_base=4, evals_per_base=1,
      ema_factors=[25.0])


if __name__ == "__main__":
  compare.run_suite(config(), sys.argv[1])
  print("suite done", flush=True)
