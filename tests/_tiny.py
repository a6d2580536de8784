"""The tiny training config the trainer tests share: runs that take seconds on a CPU."""

from anytime import config as config_lib


def tiny_config(**overrides):
  """A 2-layer d=32 model on 32-token windows of the embedded corpus; ``overrides`` are dotted
  keys (``{"train.total_steps": 12}``)."""
  config = config_lib.default_config()
  config.model.d_model = 32
  config.model.num_layers = 2
  config.model.num_heads = 2
  config.model.mlp_dim = 64
  config.model.max_len = 32
  config.data.max_bytes = 200_000
  config.train.batch_size = 8
  config.train.seq_len = 32
  config.train.async_checkpoints = False
  config.unlock()
  config.update_from_flattened_dict(overrides)
  config.lock()
  return config


def tiny_suite(base_overrides=None, **suite_overrides):
  """A comparison suite over one-device tiny runs of 100 kB of the embedded corpus (one
  evaluation batch); ``suite_overrides`` set ``suite.*`` keys."""
  import ml_collections  # pylint: disable=g-import-not-at-top

  base = tiny_config(**{
      "parallel.num_devices": 1, "parallel.mesh": {"data": 1, "fsdp": 1, "tensor": 1},
      "data.max_bytes": 100_000, "train.eval_batches": 1, **(base_overrides or {})})
  suite = config_lib.default_suite()
  suite.update(suite_overrides)
  return ml_collections.ConfigDict(dict(base=base, suite=suite))
