"""Data pipeline of the LM trainer: text corpora -> tokens -> packed windows -> grain batches.

Sources (``config.source``):
  * ``"embedded"``: the Python standard library's own ``*.py`` sources (code + docstrings), found
    via ``sysconfig.get_paths()["stdlib"]``; no download, present on every machine. Test
    directories, site-packages and the machine-specific ``_sysconfigdata*`` are left out; one file
    is one document; a file is in validation iff a stable hash of its relative path falls below
    ``validation_fraction``.
  * ``"text"``: plain UTF-8 files (``.gz`` decompressed), local or remote (``etils.epath``),
    given by glob patterns. ``document_split="blank_lines"`` makes every blank-line-separated
    block a document; ``"file"`` makes every file one.
  * ``"jsonl"``: one JSON object per line, document = ``obj[text_field]`` (``.gz`` allowed).
  * ``"array_record"``: token shards written by ``python -m anytime.lm.prepare``; the streaming
    route for data too big for memory.

Text sources are tokenized, in memory, into one stream ``doc EOS doc EOS ...``: at every call,
once per process when the caller passes a ``StreamCache`` (``streams=``), and once for good as
``.npy`` under ``cache_dir`` if set. The stream is cut into consecutive windows of
``seq_len + 1`` tokens (the last one wraps around to the start, so no token is lost);
``inputs = window[:-1]``, ``targets = window[1:]``. Training draws windows through a grain
``IndexSampler`` (new permutation per epoch, disjoint shard per process); evaluation uses a
fixed list of validation windows, the last one padded with weight 0.
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import sys
import sysconfig
from collections.abc import Callable, Iterator
from typing import Any

import grain
import ml_collections
import numpy as np
from etils import epath

from anytime.lm import documents
from anytime.lm import prepare as prepare_lib
from anytime.lm import tokenizer as tokenizer_lib
from anytime.lm.documents import DOCUMENT_SPLITS, embedded_files, expand_patterns  # re-exported

SOURCES = ("embedded", "text", "jsonl", "array_record")
SPLITS = ("train", "validation")
_EVAL_ORDER_SEED = 20260203  # Fixed: the eval windows never depend on any run's seed.


def default_config() -> ml_collections.ConfigDict:
  """All data settings with defaults; ``tokenizer`` is ``anytime.lm.tokenizer.default_config()``."""
  return ml_collections.ConfigDict(dict(
      source="embedded",
      train_patterns=(),       # Globs/paths (text, jsonl) or a prepared dir (array_record).
      validation_patterns=(),  # Same for validation; unused for "embedded".
      text_field="text",       # jsonl only.
      document_split="blank_lines",  # text only: "blank_lines" or "file".
      validation_fraction=0.05,      # embedded only: share of files held out.
      max_bytes=0,             # Cap on text read per split (0 = all).
      shuffle_seed=0,          # Combined with the run seed into the window order.
      worker_count=0,          # grain worker processes (0 = in-process).
      cache_dir="",            # If set, tokenized text streams are cached there as .npy.
      tokenizer=tokenizer_lib.default_config(),
  ))


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or (
      hi is not None and value > hi):
    accepted = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    raise ValueError(f"{name} must be an integer in {accepted}, got {value!r}")
  return int(value)


def _patterns(config: ml_collections.ConfigDict, split: str) -> tuple[str, ...]:
  name = f"{split}_patterns"
  value = config[name]
  if isinstance(value, str):
    value = (value,)
  if not value or not all(isinstance(p, str) and p for p in value):
    raise ValueError(f"data.{name} must be a non-empty tuple of paths/globs for source="
                     f"{config.source!r}, got {value!r}")
  return tuple(value)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the first bad field of a data config."""
  for key in default_config():
    if key not in config:
      raise ValueError(f"data.{key} is missing; start from anytime.lm.data.default_config()")
  if config.source not in SOURCES:
    raise ValueError(f"data.source must be one of {SOURCES}, got {config.source!r}")
  if config.source == "embedded":
    if not 0.0 < float(config.validation_fraction) < 1.0:
      raise ValueError(f"data.validation_fraction must be in (0, 1), got "
                       f"{config.validation_fraction!r}")
  else:
    _patterns(config, "train")
    _patterns(config, "validation")
  if config.document_split not in DOCUMENT_SPLITS:
    raise ValueError(f"data.document_split must be one of {DOCUMENT_SPLITS}, got "
                     f"{config.document_split!r}")
  if not isinstance(config.text_field, str) or not config.text_field:
    raise ValueError(f"data.text_field must be a non-empty string, got {config.text_field!r}")
  _check_int("data.max_bytes", config.max_bytes, 0)
  _check_int("data.shuffle_seed", config.shuffle_seed, 0, 2**32 - 1)
  _check_int("data.worker_count", config.worker_count, 0, 256)
  if not isinstance(config.tokenizer, ml_collections.ConfigDict):
    raise ValueError("data.tokenizer must be a ConfigDict (anytime.lm.tokenizer.default_config())")
  if not isinstance(config.cache_dir, str):
    raise ValueError(f"data.cache_dir must be a string path or '', got {config.cache_dir!r}")


def check_files(config: ml_collections.ConfigDict) -> None:
  """Reads every text/jsonl file of both splits once and refuses a missing, empty, blank,
  non-UTF-8 or (jsonl) malformed one with a ValueError naming it. Cheap next to training; run
  it before anything is compiled or written."""
  validate_config(config)
  if config.source not in ("text", "jsonl"):
    return
  for split in SPLITS:
    for path in _split_files(config, split):
      text = documents.read_text(path)
      if config.source == "jsonl" and not documents.jsonl_documents(path, text,
                                                                    config.text_field):
        raise ValueError(f"{os.fspath(path)}: no non-empty {config.text_field!r} field")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_process(process_index: int, process_count: int) -> None:
  _check_int("process_count", process_count, 1)
  _check_int("process_index", process_index, 0, process_count - 1)


# --------------------------------------------------------------------------- files -> documents


def iter_documents(config: ml_collections.ConfigDict, split: str) -> Iterator[str]:
  """The documents of a split, in a fixed order, capped at ``config.max_bytes``."""
  validate_config(config)
  _check_split(split)
  if config.source == "array_record":
    raise ValueError("data.source='array_record' holds tokens, not text; documents are only "
                     "available for 'embedded', 'text' and 'jsonl'")
  return _documents(config, split)


def _documents(config: ml_collections.ConfigDict, split: str) -> Iterator[str]:
  """``iter_documents`` of a validated config and split."""
  return documents.cap_bytes(_raw_documents(config, split), config.max_bytes)


def _raw_documents(config: ml_collections.ConfigDict, split: str) -> Iterator[str]:
  if config.source == "embedded":
    want_validation = split == "validation"
    for relative, full in embedded_files():
      if documents.in_validation(relative, config.validation_fraction) != want_validation:
        continue
      with open(full, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
      if text.strip():
        yield text
    return
  for path in _split_files(config, split):
    text = documents.read_text(path)
    if config.source == "jsonl":
      docs = documents.jsonl_documents(path, text, config.text_field)
      if not docs:
        raise ValueError(f"{os.fspath(path)}: no non-empty {config.text_field!r} field")
    else:
      docs = documents.text_documents(text, config.document_split)
    yield from docs


def _split_files(config: ml_collections.ConfigDict, split: str) -> list[epath.Path]:
  """Files of a split; ValueError if a file is in both train and validation."""
  files = expand_patterns(_patterns(config, split), f"data.{split}_patterns")
  other = "validation" if split == "train" else "train"
  other_files = expand_patterns(_patterns(config, other), f"data.{other}_patterns")
  overlap = sorted({os.fspath(p) for p in files} & {os.fspath(p) for p in other_files})
  if overlap:
    raise ValueError(f"data.train_patterns and data.validation_patterns share {overlap[0]!r}; "
                     "train and validation must be disjoint")
  return files


def training_texts(config: ml_collections.ConfigDict) -> Callable[[], Iterator[str]]:
  """Zero-argument callable over the training documents (what ``tokenizer.build`` trains on)."""
  validate_config(config)
  if config.source == "array_record":
    raise ValueError("cannot train a bpe tokenizer on data.source='array_record'; use "
                     "tokenizer.kind='file' with the tokenizer the shards were prepared with")
  return lambda: _documents(config, "train")


def build_tokenizer(config: ml_collections.ConfigDict,
                    workdir: str | None = None) -> tokenizer_lib.Tokenizer:
  """``tokenizer.build(config.tokenizer, workdir, training_texts(config))``."""
  validate_config(config)
  texts = None if config.source == "array_record" else (lambda: _documents(config, "train"))
  return tokenizer_lib.build(config.tokenizer, workdir, texts)


# --------------------------------------------------------------------------- token streams


class _MemoryStream:
  """A token stream held in memory."""

  def __init__(self, tokens: np.ndarray):
    self.tokens = tokens

  def __len__(self) -> int:
    return len(self.tokens)

  def read(self, start: int, length: int) -> np.ndarray:
    return self.tokens[start:start + length]


def _read_cyclic(stream: Any, start: int, length: int) -> np.ndarray:
  n = len(stream)
  start %= n
  out = stream.read(start, min(length, n - start))
  while len(out) < length:
    out = np.concatenate([out, stream.read(0, min(length - len(out), n))])
  return out


def _stat_key(path: epath.Path) -> list[Any]:
  try:
    st = path.stat()
    return [os.fspath(path), int(st.length), float(st.mtime)]
  except (AttributeError, OSError, NotImplementedError):
    return [os.fspath(path)]


def _stream_key(config: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer,
                split: str) -> str:
  if config.source == "embedded":
    files = [sys.version, sysconfig.get_paths()["stdlib"], config.validation_fraction]
  else:
    files = [_stat_key(p) for p in _split_files(config, split)]
  key = dict(source=config.source, split=split, files=files, text_field=config.text_field,
             document_split=config.document_split, max_bytes=config.max_bytes,
             tokenizer=tok.fingerprint, format=prepare_lib.TOKENS_FORMAT)
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


class StreamCache:
  """In-memory token streams of text splits, keyed by their content; owned by the caller.

  Pass one as ``streams=`` to ``load_tokens``, ``make_train_iterator``, ``make_eval_batches``
  and ``unigram_entropy`` and each split is tokenized once while it lives (e.g. one per trainer,
  shared by its resumes and branches). It keeps the ``max_streams`` most recently used ones.
  The key covers the source, the files (path, size, mtime), the split, the document settings
  and the tokenizer, so a changed file or tokenizer is tokenized again.
  """

  def __init__(self, max_streams: int = 4):
    self.max_streams = _check_int("max_streams", max_streams, 1)
    self._streams: collections.OrderedDict[str, _MemoryStream] = collections.OrderedDict()

  def __len__(self) -> int:
    return len(self._streams)

  def get(self, key: str) -> _MemoryStream | None:
    stream = self._streams.get(key)
    if stream is not None:
      self._streams.move_to_end(key)
    return stream

  def put(self, key: str, stream: _MemoryStream) -> None:
    self._streams[key] = stream
    self._streams.move_to_end(key)
    while len(self._streams) > self.max_streams:
      self._streams.popitem(last=False)

  def clear(self) -> None:
    self._streams.clear()


def _check_streams(streams: StreamCache | None) -> None:
  if streams is not None and not isinstance(streams, StreamCache):
    raise ValueError(f"streams must be an anytime.lm.data.StreamCache or None, got "
                     f"{type(streams).__name__}")


def _load_stream(config: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer,
                 split: str, streams: StreamCache | None) -> Any:
  """The token stream of a split of a validated config."""
  _check_split(split)
  _check_streams(streams)
  if not isinstance(tok, tokenizer_lib.Tokenizer):
    raise ValueError(f"tokenizer must be an anytime.lm.tokenizer.Tokenizer (from "
                     f"tokenizer.build), got {type(tok).__name__}")
  if config.source == "array_record":
    stream = prepare_lib.open_prepared(_patterns(config, split), f"data.{split}_patterns", tok)
    other = "validation" if split == "train" else "train"
    other_stream = prepare_lib.open_prepared(_patterns(config, other), f"data.{other}_patterns",
                                             tok)
    if os.fspath(stream.directory) == os.fspath(other_stream.directory):
      raise ValueError(f"data.train_patterns and data.validation_patterns both name "
                       f"{os.fspath(stream.directory)!r}; train and validation must be disjoint")
    return stream
  key = _stream_key(config, tok, split)
  if streams is not None and (found := streams.get(key)) is not None:
    return found
  cache_file = epath.Path(config.cache_dir) / f"tokens-{split}-{key}.npy" if (
      config.cache_dir) else None
  if cache_file is not None and cache_file.exists():
    with cache_file.open("rb") as f:
      tokens = np.load(f, allow_pickle=False)
  else:
    tokens = tok.encode_documents(list(_documents(config, split)))
    if cache_file is not None:
      cache_file.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache_file.parent / f"{cache_file.name}.tmp{os.getpid()}"
      with tmp.open("wb") as f:
        np.save(f, tokens, allow_pickle=False)
      tmp.rename(cache_file)
  if len(tokens) == 0:
    raise ValueError(f"data {split} split of source={config.source!r} has no text")
  stream = _MemoryStream(tokens)
  if streams is not None:
    streams.put(key, stream)
  return stream


def load_tokens(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                split: str = "train", *, streams: StreamCache | None = None) -> np.ndarray:
  """The whole token stream of a split (``doc EOS doc EOS ...``) as one array."""
  validate_config(config)
  stream = _load_stream(config, tokenizer, split, streams)
  return stream.read(0, len(stream))


# --------------------------------------------------------------------------- packing


class PackedWindows:
  """Random-access grain source: window ``i`` = stream[i*(L+1) : (i+1)*(L+1)], wrapping."""

  def __init__(self, stream: Any, seq_len: int):
    self._stream = stream
    self._window = seq_len + 1
    self._len = math.ceil(len(stream) / self._window)

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    window = _read_cyclic(self._stream, int(index) * self._window, self._window)
    window = window.astype(np.int32)
    return {"inputs": window[:-1], "targets": window[1:]}

  def __repr__(self) -> str:
    return f"PackedWindows(num_windows={self._len}, window={self._window})"


def _combined_seed(shuffle_seed: int, seed: int) -> int:
  return int(np.random.SeedSequence([int(shuffle_seed), int(seed)]).generate_state(1)[0])


def make_train_iterator(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizer_lib.Tokenizer,
    *,
    seq_len: int,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    streams: StreamCache | None = None,
) -> grain.DataLoaderIterator:
  """Infinite grain iterator of ``{"inputs", "targets"}`` int32 ``[B_local, seq_len]`` batches.

  ``B_local = global_batch_size // process_count``; processes read disjoint windows. The order
  depends on ``(config.shuffle_seed, seed)`` only, with a new permutation every epoch. The
  iterator's ``get_state()/set_state()`` (or ``grain.checkpoint.CheckpointSave/Restore`` in an
  Orbax ``CheckpointManager``) resume it exactly. ``config.worker_count`` > 0 starts grain
  worker processes, which read absl flags: call it under ``absl.app.run`` (as ``anytime.main``
  does) or after ``absl.flags.FLAGS(sys.argv[:1])``. ``streams``: see ``StreamCache``.
  """
  validate_config(config)
  seq_len = _check_int("seq_len", seq_len, 1)
  global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
  _check_int("seed", seed, 0, 2**32 - 1)
  _check_process(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be divisible by "
                     f"process_count={process_count}")
  if config.worker_count:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      raise ValueError(f"data.worker_count={config.worker_count} starts grain worker processes, "
                       "which need absl flags parsed: run under absl.app.run, call "
                       "absl.flags.FLAGS(sys.argv[:1]) first, or set data.worker_count=0")
  stream = _load_stream(config, tokenizer, "train", streams)
  if len(stream) < seq_len + 1:
    raise ValueError(f"the train split has {len(stream)} tokens, fewer than seq_len+1="
                     f"{seq_len + 1}; lower seq_len or give more data")
  source = PackedWindows(stream, seq_len)
  if len(source) < process_count:
    raise ValueError(f"the train split has {len(source)} windows of seq_len+1 tokens, fewer "
                     f"than process_count={process_count}")
  shard_options = grain.sharding.ShardOptions(
      shard_index=process_index, shard_count=process_count, drop_remainder=True)
  sampler = grain.samplers.IndexSampler(
      num_records=len(source), shard_options=shard_options, shuffle=True, num_epochs=None,
      seed=_combined_seed(config.shuffle_seed, seed))
  # An in-memory stream is read in the calling thread: a prefetch thread has no I/O to hide
  # there, and grain scans its whole buffer for every record it hands out (2.9 vs 0.7 ms of CPU
  # per batch, benchmarks/group_host.py). Files are read ahead by 8 threads. Same order.
  in_memory = isinstance(stream, _MemoryStream)
  read_options = (grain.ReadOptions(num_threads=0, prefetch_buffer_size=0) if in_memory else
                  grain.ReadOptions(num_threads=8, prefetch_buffer_size=256))
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[grain.transforms.Batch(global_batch_size // process_count,
                                         drop_remainder=True)],
      worker_count=config.worker_count, shard_options=shard_options, read_options=read_options)
  return iter(loader)


def _eval_windows(config, tokenizer, seq_len, batch_size, num_batches, process_index,
                  process_count, streams):
  """The checked arguments of the validation windows: (stream, window length, rows per
  process, each batch's window indices for this process)."""
  validate_config(config)
  seq_len = _check_int("seq_len", seq_len, 1)
  batch_size = _check_int("batch_size", batch_size, 1)
  num_batches = _check_int("num_batches", num_batches, 0)
  _check_process(process_index, process_count)
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be divisible by process_count="
                     f"{process_count}")
  stream = _load_stream(config, tokenizer, "validation", streams)
  window, local = seq_len + 1, batch_size // process_count
  return stream, window, local, list(
      _eval_rows(len(stream), window, batch_size, num_batches, process_index, local))


def make_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizer_lib.Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
    streams: StreamCache | None = None,
) -> list[dict[str, np.ndarray]]:
  """A fixed list of validation batches ``{"inputs", "targets", "weights"}`` (local share).

  Validation windows never wrap: the last one is padded with EOS and weight 0, and rows past
  the last window are all-padding (weight 0), so ``sum(weights)`` counts every real target once.
  Windows are taken in a fixed pseudo-random order (independent of any seed), so the first
  ``num_batches`` cover the whole split evenly; ``num_batches=0`` (or more than exist) gives all.
  ``batch_size`` is global; process ``p`` gets rows ``[p*B/P, (p+1)*B/P)`` of every batch.
  ``streams``: see ``StreamCache``.
  """
  stream, window, local, rows_per_batch = _eval_windows(
      config, tokenizer, seq_len, batch_size, num_batches, process_index, process_count, streams)
  batches = []
  for rows in rows_per_batch:
    tokens = np.full((local, window), tokenizer.eos_id, np.int32)
    real = np.zeros((local, window), np.float32)
    for r, w in enumerate(rows):
      piece = stream.read(w * window, min(window, len(stream) - w * window))
      tokens[r, :len(piece)] = piece
      real[r, :len(piece)] = 1.0
    batches.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                    "weights": real[:, 1:]})
  return batches


def _eval_rows(stream_len: int, window: int, batch_size: int, num_batches: int,
               process_index: int, local: int) -> list[list[int]]:
  """Per evaluation batch, the window indices of this process's rows (fewer at the end)."""
  num_windows = math.ceil(stream_len / window)
  available = math.ceil(num_windows / batch_size)
  num_batches = available if num_batches == 0 else min(num_batches, available)
  order = np.random.default_rng(_EVAL_ORDER_SEED).permutation(num_windows)
  return [order[b * batch_size + process_index * local:][:local].tolist()
          for b in range(num_batches)]


def eval_window_documents(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizer_lib.Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
    streams: StreamCache | None = None,
) -> np.ndarray:
  """The source document of every row of ``make_eval_batches`` (same arguments), flattened in
  the batches' row order (batch 0's rows, then batch 1's, ...); -1 for an all-padding row.

  The validation stream is ``doc EOS doc EOS ...``: a token's document is the number of EOS
  tokens before it (an EOS belongs to the document it ends). A window that spans several
  documents is assigned the one that contributes most of its targets (ties: the first).
  These are the clusters of the evaluation set's clustered standard error
  (``anytime.experiments.stats.cluster_se``).
  """
  stream, window, local, rows_per_batch = _eval_windows(
      config, tokenizer, seq_len, batch_size, num_batches, process_index, process_count, streams)
  tokens = np.asarray(stream.read(0, len(stream)))
  is_eos = tokens == tokenizer.eos_id
  document = np.concatenate([[0], np.cumsum(is_eos)[:-1]])  # EOS tokens before each token
  out = []
  for rows in rows_per_batch:
    for w in rows:
      targets = document[w * window + 1:(w + 1) * window]  # the window's targets' documents
      if targets.size == 0:
        out.append(-1)
        continue
      values, counts = np.unique(targets, return_counts=True)
      out.append(int(values[np.argmax(counts)]))
    out += [-1] * (local - len(rows))
  return np.asarray(out, dtype=np.int64)


def unigram_entropy(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                    split: str = "validation", max_tokens: int = 0, *,
                    streams: StreamCache | None = None) -> float:
  """Entropy (nats/token) of the split's unigram token distribution, EOS included.

  A model that only learned token frequencies reaches this loss; anything that uses context
  goes below it. ``max_tokens`` > 0 uses only the stream's first that many tokens.
  """
  validate_config(config)
  _check_int("max_tokens", max_tokens, 0)
  stream = _load_stream(config, tokenizer, split, streams)
  n = len(stream) if not max_tokens else min(max_tokens, len(stream))
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for start in range(0, n, 1 << 22):
    chunk = stream.read(start, min(1 << 22, n - start)).astype(np.int64)
    counts += np.bincount(chunk, minlength=tokenizer.vocab_size)[:tokenizer.vocab_size]
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())
