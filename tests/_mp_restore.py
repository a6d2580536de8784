"""One process of a multi-process restore: loads the train state of a checkpoint onto a mesh of
every process's devices and writes the gathered params (process 0) as an .npz (no pickle).

    python tests/_mp_restore.py CHECKPOINT_DIR STEP OUT.npz COORDINATOR NUM_PROCESSES PROCESS_ID \
        CONFIG_JSON
"""

from __future__ import annotations

import json
import sys

import jax
import ml_collections
import numpy as np

from anytime import checkpoint, loop, parallel


def main(argv: list[str]) -> None:
  directory, step, out, coordinator, num_processes, process_id, config_json = argv[1:]
  parallel.maybe_initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = ml_collections.ConfigDict(json.loads(config_json))  # a resolved config, as JSON
  run = loop.build_run(config, directory + "/scratch")
  store = checkpoint.CheckpointStore(directory, read_only=True, async_save=False)
  state = store.restore(int(step), run.abstract_state)  # train state only: any process count
  store.close()
  shardings = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
  params = parallel.to_host(state.params)
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(path): np.asarray(x)
            for path, x in jax.tree.flatten_with_path(params)[0]}
    np.savez(out, **flat)
    print(f"restored step {int(state.step)} on {jax.process_count()} processes, mesh "
          f"{dict(run.mesh.shape)}, param specs {sorted(shardings)}", flush=True)


if __name__ == "__main__":
  main(sys.argv)
