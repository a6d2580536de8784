"""Test setup: 8 fake CPU devices (set before jax is imported anywhere), the ``slow`` marker,
and a logged random seed for every test.

``pytest -m "not slow"`` is the quick library-and-unit pass; CI runs everything. Each test
starts with Python's and numpy's global generators seeded from its node id (or from
``ANYTIME_TEST_SEED``); a failing test's report names the seed to rerun it with.
"""

import os
import random
import zlib

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "slow: subprocesses, multiple processes, notebooks or whole training runs "
      "(deselect with -m 'not slow')")


def seed_of(nodeid: str) -> int:
  """The seed of one test: ANYTIME_TEST_SEED if set, else a stable hash of its node id."""
  return int(os.environ.get("ANYTIME_TEST_SEED", zlib.crc32(nodeid.encode()) % 2**31))


@pytest.fixture(autouse=True)
def _seeded(request):
  seed = seed_of(request.node.nodeid)
  random.seed(seed)
  np.random.seed(seed)
  request.node.user_properties.append(("seed", seed))
  yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  report = outcome.get_result()
  if report.failed:
    seed = seed_of(item.nodeid)
    report.sections.append(("random seed", f"{seed} (rerun with ANYTIME_TEST_SEED={seed})"))


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for this module (runs here share most of their programs)."""
  from jax._src import compilation_cache as cache_lib  # pylint: disable=g-import-not-at-top

  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  directory = str(tmp_path_factory.mktemp("jax_cache"))
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  cache_lib.reset_cache()
  yield directory
  for name, value in saved.items():
    jax.config.update(name, value)
  cache_lib.reset_cache()
