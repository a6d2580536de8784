"""A batched group of 3 runs trained in its own process (tests/test_batched.py signals it)."""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
sys.path.insert(0, os.path.dirname(__file__))

from etils import epath  # noqa: E402

from anytime import batched, config as config_lib  # noqa: E402
from _tiny import tiny_config  # noqa: E402

STEPS = 40


def specs(root: epath.Path) -> list[batched.RunSpec]:
  out = []
  for i, lr in enumerate((1e-3, 3e-3, 1e-2)):
    config = tiny_config(**{
        "seed": i, "parallel.num_devices": 1, "parallel.mesh": {"data": 1, "fsdp": 1, "tensor": 1},
        "data.max_bytes": 100_000, "train.total_steps": STEPS, "train.log_every": 1,
        "train.eval_every": 20, "train.eval_batches": 1, "train.checkpoint_every": 10,
        "train.async_checkpoints": False})
    config.unlock()
    config.optimizer.schedule = dict(name="constant", peak_value=lr, warmup_steps=2)
    config.lock()
    config_lib.validate_config(config)
    out.append(batched.RunSpec(name=f"r{i}", config=config, directory=root / f"r{i}" / "main",
                               end_step=STEPS))
  return out


if __name__ == "__main__":
  root = epath.Path(sys.argv[1])
  batched.train_group(specs(root), workdir=root,
                      progress=lambda p: print(f"progress {p.step}", flush=True))
  print("done", flush=True)
