#!/usr/bin/env bash
# Writes launch/constraints.txt: the exact versions of the project's dependencies (and of what
# they pull in) in the environment the test suite passed in. The launchers install with
# `pip install -c launch/constraints.txt`, so workers run what was tested, and a new Orbax
# cannot silently change the checkpoint format.
#
#   PYTHON=python3 launch/make_constraints.sh   # after `pytest` passed in that environment
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
"$python" - "$here/constraints.txt" <<'PY'
import importlib.metadata as md
import re
import sys

roots = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml_collections",
         "numpy", "matplotlib", "absl-py", "etils", "tokenizers", "sentencepiece",
         "tensorboardX", "scipy", "tensorstore", "gcsfs", "fsspec", "chex", "protobuf"]
seen, todo = {}, list(roots)
while todo:
  name = todo.pop()
  key = re.sub(r"[-_.]+", "-", name).lower()
  if key in seen:
    continue
  try:
    dist = md.distribution(name)
  except md.PackageNotFoundError:
    continue
  seen[key] = (dist.metadata["Name"], dist.version)
  for req in dist.requires or []:
    if "extra ==" in req:
      continue
    todo.append(re.split(r"[ ;<>=!~\[(]", req, 1)[0])
lines = [f"{name}=={version}" for name, version in sorted(seen.values(), key=lambda x: x[0].lower())]
header = ("# Versions the anytime test suite passed with (launch/make_constraints.sh wrote this).\n"
          "# Used by the launchers: pip install -c launch/constraints.txt ...\n")
open(sys.argv[1], "w").write(header + "\n".join(lines) + "\n")
print(f"wrote {sys.argv[1]} ({len(lines)} pins)")
PY
