"""jax-anytime: horizon-free learning-rate schedules and weight averaging for JAX.

The import name is ``anytime``. The core install (``anytime.schedules``, ``anytime.averaging``)
needs jax + optax + numpy only; the trainer, data, checkpointing, labs and plots come with the
extras ``[train]``, ``[labs]`` and ``[dev]``; the suite's Ray and SLURM executors with ``[cluster]``.
"""

import re

from setuptools import find_packages, setup

with open("anytime/__init__.py", encoding="utf-8") as f:
  VERSION = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

TRAIN = [
    "flax>=0.12",
    "orbax-checkpoint>=0.11",
    "grain>=0.2.12",
    "ml_collections>=1.0",
    "absl-py",
    "etils[epath]",
    "tokenizers>=0.20",
    "sentencepiece",
    "tensorboardX",
    "matplotlib",
]
LABS = ["scipy", "matplotlib", "ml_collections>=1.0", "flax>=0.12"]
# The suite on a cluster (suite.executor = "ray" | "slurm"); not in DEV: CI's 2 cores and ~10
# minutes have no room for its ~50 s of Ray/submitit tests (they skip without this extra).
CLUSTER = ["ray>=2.40", "submitit>=1.5"]
DEV = sorted(set(TRAIN + LABS + [
    "pytest", "pytest-xdist", "nbclient", "nbformat", "ipykernel", "sphinx>=7",
]))

setup(
    name="jax-anytime",
    version=VERSION,
    description=(
        "Horizon-free (anytime) learning-rate schedules and weight averaging for JAX/optax, "
        "with a language-model trainer and WSD branches as extras."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["anytime", "anytime.*"]),
    package_data={"anytime": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=["jax>=0.7", "optax>=0.2.6", "numpy"],
    extras_require={"train": TRAIN, "labs": LABS, "cluster": CLUSTER, "dev": DEV},
)
