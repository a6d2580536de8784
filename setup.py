"""anytime: horizon-free learning-rate schedules and weight averaging for LM pretraining."""

from setuptools import find_packages, setup

setup(
    name="anytime",
    version="0.1.0",
    description=(
        "Horizon-free (anytime) learning-rate schedules, weight averaging and WSD branches "
        "for language-model pretraining in JAX/Flax."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["anytime", "anytime.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.6",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "ml_collections>=1.0",
        "numpy",
        "matplotlib",
        "absl-py",
        "etils[epath]",
        "tokenizers>=0.20",
        "sentencepiece",
        "tensorboardX",
        "scipy",
    ],
    extras_require={
        "dev": [
            "pytest",
            "pytest-xdist",
            "nbclient",
            "nbformat",
            "ipykernel",
        ],
    },
)
