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
  * ``"array_record"``: token shards written by ``python -m anytime.lm.data prepare``; the
    streaming route for data too big for memory.

Text sources are tokenized once, in memory, into one stream ``doc EOS doc EOS ...`` (cached per
process, and as ``.npy`` under ``cache_dir`` if set). The stream is cut into consecutive windows
of ``seq_len + 1`` tokens (the last one wraps around to the start, so no token is lost);
``inputs = window[:-1]``, ``targets = window[1:]``. Training draws windows through a grain
``IndexSampler`` (new permutation per epoch, disjoint shard per process); evaluation uses a
fixed list of validation windows, the last one padded with weight 0.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import hashlib
import json
import math
import os
import re
import sys
import sysconfig
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from etils import epath

from anytime.lm import tokenizer as tokenizer_lib

SOURCES = ("embedded", "text", "jsonl", "array_record")
DOCUMENT_SPLITS = ("blank_lines", "file")
SPLITS = ("train", "validation")
METADATA_FILE = "metadata.json"
_FORMAT = "anytime.lm.data.tokens/v1"
_EXCLUDED_STDLIB_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")
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
      text = _read_text(path)
      if config.source == "jsonl" and not _jsonl_documents(path, text, config.text_field):
        raise ValueError(f"{os.fspath(path)}: no non-empty {config.text_field!r} field")


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _check_process(process_index: int, process_count: int) -> None:
  _check_int("process_count", process_count, 1)
  _check_int("process_index", process_index, 0, process_count - 1)


# --------------------------------------------------------------------------- files -> documents


def expand_patterns(patterns: Sequence[str], field: str = "patterns") -> list[epath.Path]:
  """Sorted, de-duplicated files matching glob patterns; FileNotFoundError if one matches none."""
  files: dict[str, epath.Path] = {}
  for pattern in patterns:
    if not any(c in pattern for c in "*?["):
      path = epath.Path(pattern)
      if not path.exists():
        raise FileNotFoundError(f"{field}: {pattern!r} does not exist")
      matches = [path]
    else:
      parts = pattern.split("/")
      first = next(i for i, part in enumerate(parts) if any(c in part for c in "*?["))
      base = "/".join(parts[:first]) or ("/" if pattern.startswith("/") else ".")
      rest = "/".join(parts[first:])
      base_path = epath.Path(base)
      matches = sorted(base_path.glob(rest)) if base_path.exists() else []
      if not matches:
        raise FileNotFoundError(f"{field}: no file matches {pattern!r}")
    for path in matches:
      if path.is_dir():
        raise ValueError(f"{field}: {os.fspath(path)!r} is a directory; give files or a glob")
      files.setdefault(os.fspath(path), path)
  return [files[k] for k in sorted(files)]


def _read_text(path: epath.Path) -> str:
  """UTF-8 text of a file (``.gz`` decompressed); ValueError naming the file if bad or empty."""
  data = path.read_bytes()
  if path.name.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise ValueError(f"{os.fspath(path)}: not a valid gzip file ({e})") from e
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{os.fspath(path)}: not valid UTF-8 (byte {e.start}: {e.reason}); "
                     "convert it to UTF-8") from e
  if not text.strip():
    raise ValueError(f"{os.fspath(path)}: file is empty (no text)")
  return text


def _text_documents(text: str, document_split: str) -> list[str]:
  if document_split == "file":
    return [text]
  return [d.strip("\r\n") for d in _BLANK_LINES.split(text) if d.strip()]


def _jsonl_documents(path: epath.Path, text: str, text_field: str) -> list[str]:
  docs = []
  for line_number, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{os.fspath(path)}:{line_number}: invalid JSON ({e.msg})") from e
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
      raise ValueError(f"{os.fspath(path)}:{line_number}: no string field "
                       f"data.text_field={text_field!r}")
    if record[text_field].strip():
      docs.append(record[text_field])
  return docs


def embedded_files() -> list[tuple[str, str]]:
  """``(relative_path, absolute_path)`` of the embedded corpus, sorted by relative path."""
  root = sysconfig.get_paths()["stdlib"]
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in _EXCLUDED_STDLIB_DIRS
                   and not d.startswith(("test_", "config-", "."))]
    for name in filenames:
      if name.endswith(".py") and not name.startswith("_sysconfigdata"):
        full = os.path.join(dirpath, name)
        found.append((os.path.relpath(full, root).replace(os.sep, "/"), full))
  return sorted(found)


def _in_validation(relative_path: str, fraction: float) -> bool:
  digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _cap(docs: Iterable[str], max_bytes: int) -> Iterator[str]:
  """Documents until ``max_bytes`` UTF-8 bytes are used (the last one cut); all if 0."""
  used = 0
  for doc in docs:
    if max_bytes and used >= max_bytes:
      return
    if max_bytes:
      raw = doc.encode("utf-8")
      if used + len(raw) > max_bytes:
        doc = raw[:max_bytes - used].decode("utf-8", errors="ignore")
      used += len(raw)
    if doc:
      yield doc


def iter_documents(config: ml_collections.ConfigDict, split: str) -> Iterator[str]:
  """The documents of a split, in a fixed order, capped at ``config.max_bytes``."""
  validate_config(config)
  _check_split(split)
  if config.source == "array_record":
    raise ValueError("data.source='array_record' holds tokens, not text; documents are only "
                     "available for 'embedded', 'text' and 'jsonl'")
  return _cap(_raw_documents(config, split), config.max_bytes)


def _raw_documents(config: ml_collections.ConfigDict, split: str) -> Iterator[str]:
  if config.source == "embedded":
    want_validation = split == "validation"
    for relative, full in embedded_files():
      if _in_validation(relative, config.validation_fraction) != want_validation:
        continue
      with open(full, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
      if text.strip():
        yield text
    return
  for path in _split_files(config, split):
    text = _read_text(path)
    if config.source == "jsonl":
      docs = _jsonl_documents(path, text, config.text_field)
      if not docs:
        raise ValueError(f"{os.fspath(path)}: no non-empty {config.text_field!r} field")
    else:
      docs = _text_documents(text, config.document_split)
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
  return lambda: iter_documents(config, "train")


def build_tokenizer(config: ml_collections.ConfigDict,
                    workdir: str | None = None) -> tokenizer_lib.Tokenizer:
  """``tokenizer.build(config.tokenizer, workdir, training_texts(config))``."""
  validate_config(config)
  texts = None if config.source == "array_record" else training_texts(config)
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


class _ArrayRecordStream:
  """The token stream of a directory written by ``prepare``, read record by record."""

  def __init__(self, directory: epath.Path, metadata: dict[str, Any]):
    self.directory = directory
    self.metadata = metadata
    self.record_tokens = int(metadata["record_tokens"])
    self.num_tokens = int(metadata["num_tokens"])
    self.dtype = np.dtype(metadata["dtype"])
    paths = [os.fspath(directory / name) for name in metadata["shards"]]
    self._source = grain.sources.ArrayRecordDataSource(paths)

  def __len__(self) -> int:
    return self.num_tokens

  def read(self, start: int, length: int) -> np.ndarray:
    first, last = start // self.record_tokens, (start + length - 1) // self.record_tokens
    records = [np.frombuffer(self._source[r], self.dtype) for r in range(first, last + 1)]
    offset = start - first * self.record_tokens
    return np.concatenate(records)[offset:offset + length]


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
             tokenizer=tok.fingerprint, format=_FORMAT)
  return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


_STREAMS: collections.OrderedDict[str, Any] = collections.OrderedDict()
_MAX_CACHED_STREAMS = 4


def _load_stream(config: ml_collections.ConfigDict, tok: tokenizer_lib.Tokenizer,
                 split: str) -> Any:
  validate_config(config)
  _check_split(split)
  if not isinstance(tok, tokenizer_lib.Tokenizer):
    raise ValueError(f"tokenizer must be an anytime.lm.tokenizer.Tokenizer (from "
                     f"tokenizer.build), got {type(tok).__name__}")
  if config.source == "array_record":
    stream = _open_prepared(_patterns(config, split), f"data.{split}_patterns", tok)
    other = "validation" if split == "train" else "train"
    other_stream = _open_prepared(_patterns(config, other), f"data.{other}_patterns", tok)
    if os.fspath(stream.directory) == os.fspath(other_stream.directory):
      raise ValueError(f"data.train_patterns and data.validation_patterns both name "
                       f"{os.fspath(stream.directory)!r}; train and validation must be disjoint")
    return stream
  key = _stream_key(config, tok, split)
  if key in _STREAMS:
    _STREAMS.move_to_end(key)
    return _STREAMS[key]
  cache_file = epath.Path(config.cache_dir) / f"tokens-{split}-{key}.npy" if (
      config.cache_dir) else None
  if cache_file is not None and cache_file.exists():
    with cache_file.open("rb") as f:
      tokens = np.load(f, allow_pickle=False)
  else:
    tokens = tok.encode_documents(list(iter_documents(config, split)))
    if cache_file is not None:
      cache_file.parent.mkdir(parents=True, exist_ok=True)
      tmp = cache_file.parent / f"{cache_file.name}.tmp{os.getpid()}"
      with tmp.open("wb") as f:
        np.save(f, tokens, allow_pickle=False)
      tmp.rename(cache_file)
  if len(tokens) == 0:
    raise ValueError(f"data {split} split of source={config.source!r} has no text")
  stream = _MemoryStream(tokens)
  _STREAMS[key] = stream
  while len(_STREAMS) > _MAX_CACHED_STREAMS:
    _STREAMS.popitem(last=False)
  return stream


def load_tokens(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                split: str = "train") -> np.ndarray:
  """The whole token stream of a split (``doc EOS doc EOS ...``) as one array."""
  stream = _load_stream(config, tokenizer, split)
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
) -> grain.DataLoaderIterator:
  """Infinite grain iterator of ``{"inputs", "targets"}`` int32 ``[B_local, seq_len]`` batches.

  ``B_local = global_batch_size // process_count``; processes read disjoint windows. The order
  depends on ``(config.shuffle_seed, seed)`` only, with a new permutation every epoch. The
  iterator's ``get_state()/set_state()`` (or ``grain.checkpoint.CheckpointSave/Restore`` in an
  Orbax ``CheckpointManager``) resume it exactly.
  """
  validate_config(config)
  seq_len = _check_int("seq_len", seq_len, 1)
  global_batch_size = _check_int("global_batch_size", global_batch_size, 1)
  _check_int("seed", seed, 0, 2**32 - 1)
  _check_process(process_index, process_count)
  if global_batch_size % process_count:
    raise ValueError(f"global_batch_size={global_batch_size} must be divisible by "
                     f"process_count={process_count}")
  stream = _load_stream(config, tokenizer, "train")
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
  if config.worker_count:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; defaults outside absl.app
      flags.FLAGS.mark_as_parsed()
  threads = 1 if isinstance(stream, _MemoryStream) else 8
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[grain.transforms.Batch(global_batch_size // process_count,
                                         drop_remainder=True)],
      worker_count=config.worker_count, shard_options=shard_options,
      read_options=grain.ReadOptions(num_threads=threads, prefetch_buffer_size=256))
  return iter(loader)


def make_eval_batches(
    config: ml_collections.ConfigDict,
    tokenizer: tokenizer_lib.Tokenizer,
    *,
    seq_len: int,
    batch_size: int,
    num_batches: int,
    process_index: int = 0,
    process_count: int = 1,
) -> list[dict[str, np.ndarray]]:
  """A fixed list of validation batches ``{"inputs", "targets", "weights"}`` (local share).

  Validation windows never wrap: the last one is padded with EOS and weight 0, and rows past
  the last window are all-padding (weight 0), so ``sum(weights)`` counts every real target once.
  Windows are taken in a fixed pseudo-random order (independent of any seed), so the first
  ``num_batches`` cover the whole split evenly; ``num_batches=0`` (or more than exist) gives all.
  ``batch_size`` is global; process ``p`` gets rows ``[p*B/P, (p+1)*B/P)`` of every batch.
  """
  validate_config(config)
  seq_len = _check_int("seq_len", seq_len, 1)
  batch_size = _check_int("batch_size", batch_size, 1)
  num_batches = _check_int("num_batches", num_batches, 0)
  _check_process(process_index, process_count)
  if batch_size % process_count:
    raise ValueError(f"batch_size={batch_size} must be divisible by process_count="
                     f"{process_count}")
  stream = _load_stream(config, tokenizer, "validation")
  window = seq_len + 1
  num_windows = math.ceil(len(stream) / window)
  available = math.ceil(num_windows / batch_size)
  num_batches = available if num_batches == 0 else min(num_batches, available)
  order = np.random.default_rng(_EVAL_ORDER_SEED).permutation(num_windows)
  local = batch_size // process_count
  batches = []
  for b in range(num_batches):
    rows = order[b * batch_size + process_index * local:][:local].tolist()
    tokens = np.full((local, window), tokenizer.eos_id, np.int32)
    real = np.zeros((local, window), np.float32)
    for r, w in enumerate(rows):
      piece = stream.read(w * window, min(window, len(stream) - w * window))
      tokens[r, :len(piece)] = piece
      real[r, :len(piece)] = 1.0
    batches.append({"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
                    "weights": real[:, 1:]})
  return batches


def unigram_entropy(config: ml_collections.ConfigDict, tokenizer: tokenizer_lib.Tokenizer,
                    split: str = "validation", max_tokens: int = 0) -> float:
  """Entropy (nats/token) of the split's unigram token distribution, EOS included.

  A model that only learned token frequencies reaches this loss; anything that uses context
  goes below it. ``max_tokens`` > 0 uses only the stream's first that many tokens.
  """
  _check_int("max_tokens", max_tokens, 0)
  stream = _load_stream(config, tokenizer, split)
  n = len(stream) if not max_tokens else min(max_tokens, len(stream))
  counts = np.zeros(tokenizer.vocab_size, np.int64)
  for start in range(0, n, 1 << 22):
    chunk = stream.read(start, min(1 << 22, n - start)).astype(np.int64)
    counts += np.bincount(chunk, minlength=tokenizer.vocab_size)[:tokenizer.vocab_size]
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


# --------------------------------------------------------------------------- prepare (ArrayRecord)


def _open_prepared(patterns: Sequence[str], field: str,
                   tok: tokenizer_lib.Tokenizer) -> _ArrayRecordStream:
  dirs = []
  for pattern in patterns:
    path = epath.Path(pattern)
    if not any(c in pattern for c in "*?["):
      if not path.exists():
        raise FileNotFoundError(f"{field}: {pattern!r} does not exist")
      dirs.append(path if path.is_dir() else path.parent)
    else:
      dirs.extend(p if p.is_dir() else p.parent for p in expand_patterns([pattern], field))
  dirs = sorted({os.fspath(d): d for d in dirs}.values(), key=os.fspath)
  if len(dirs) != 1:
    raise ValueError(f"{field} must name exactly one directory written by `prepare`, got "
                     f"{[os.fspath(d) for d in dirs]}")
  meta_path = dirs[0] / METADATA_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f"{field}: {os.fspath(meta_path)} does not exist; write the "
                            "directory with `python -m anytime.lm.data prepare`")
  meta = json.loads(meta_path.read_text())
  if meta.get("format") != _FORMAT:
    raise ValueError(f"{os.fspath(meta_path)}: format {meta.get('format')!r}, want {_FORMAT!r}")
  if meta["tokenizer"] != tok.fingerprint or meta["vocab_size"] != tok.vocab_size:
    raise ValueError(f"{os.fspath(dirs[0])} was prepared with tokenizer {meta['tokenizer']} "
                     f"(vocab {meta['vocab_size']}), but data.tokenizer gives {tok!r}")
  if meta["num_tokens"] < 1:
    raise ValueError(f"{os.fspath(dirs[0])} holds no tokens")
  return _ArrayRecordStream(dirs[0], meta)


def prepare(
    input_patterns: Sequence[str],
    tokenizer: tokenizer_lib.Tokenizer,
    output_dir: str,
    *,
    source: str = "text",
    text_field: str = "text",
    document_split: str = "blank_lines",
    record_tokens: int = 4096,
    shard_size: int = 16384,
) -> dict[str, Any]:
  """Tokenizes files into ArrayRecord shards under ``output_dir``; returns the metadata.

  The stream ``doc EOS doc EOS ...`` is stored in records of ``record_tokens`` tokens (the last
  may be shorter), ``shard_size`` records per shard, one file at a time (bounded memory).
  ``metadata.json`` is written last and marks a complete directory.
  """
  from array_record.python.array_record_module import ArrayRecordWriter  # pylint: disable=g-import-not-at-top
  if source not in ("text", "jsonl"):
    raise ValueError(f"source must be 'text' or 'jsonl', got {source!r}")
  if document_split not in DOCUMENT_SPLITS:
    raise ValueError(f"document_split must be one of {DOCUMENT_SPLITS}, got {document_split!r}")
  record_tokens = _check_int("record_tokens", record_tokens, 1)
  shard_size = _check_int("shard_size", shard_size, 1)
  files = expand_patterns(list(input_patterns), "--input")
  out = epath.Path(output_dir)
  if (out / METADATA_FILE).exists():
    raise ValueError(f"--output {output_dir!r} already holds prepared data; pick a new one")
  out.mkdir(parents=True, exist_ok=True)
  dtype = tokenizer_lib.token_dtype(tokenizer.vocab_size)
  shards: list[str] = []
  writer, in_shard, num_records, num_tokens = None, 0, 0, 0
  buffer = np.zeros((0,), dtype)

  def write(record: np.ndarray) -> None:
    nonlocal writer, in_shard, num_records
    if writer is None or in_shard == shard_size:
      if writer is not None:
        writer.close()
      shards.append(f"tokens-{len(shards):05d}.array_record")
      writer = ArrayRecordWriter(os.fspath(out / shards[-1]), "group_size:1")
      in_shard = 0
    writer.write(record.tobytes())
    in_shard += 1
    num_records += 1

  for path in files:
    text = _read_text(path)
    docs = (_jsonl_documents(path, text, text_field) if source == "jsonl"
            else _text_documents(text, document_split))
    tokens = tokenizer.encode_documents(docs).astype(dtype)
    num_tokens += len(tokens)
    buffer = np.concatenate([buffer, tokens])
    full = len(buffer) // record_tokens
    for r in range(full):
      write(buffer[r * record_tokens:(r + 1) * record_tokens])
    buffer = buffer[full * record_tokens:]
  if len(buffer):
    write(buffer)
  if writer is not None:
    writer.close()
  metadata = dict(format=_FORMAT, dtype=dtype.name, record_tokens=record_tokens,
                  num_tokens=num_tokens, num_records=num_records, shards=shards,
                  vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                  tokenizer=tokenizer.fingerprint, inputs=[os.fspath(f) for f in files])
  (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
  return metadata


def _tokenizer_from_flag(value: str) -> tokenizer_lib.Tokenizer:
  if value == "byte":
    return tokenizer_lib.ByteTokenizer()
  return tokenizer_lib.load_file(value)


def main(argv: Sequence[str] | None = None) -> None:
  """``python -m anytime.lm.data prepare --input GLOB --tokenizer T --output DIR``."""
  parser = argparse.ArgumentParser(prog="python -m anytime.lm.data")
  sub = parser.add_subparsers(dest="command", required=True)
  p = sub.add_parser("prepare", help="tokenize text/jsonl files into ArrayRecord shards")
  p.add_argument("--input", action="append", required=True, help="file or glob; repeatable")
  p.add_argument("--tokenizer", required=True,
                 help="'byte', a tokenizer.json or a sentencepiece .model")
  p.add_argument("--output", required=True, help="new directory for shards + metadata.json")
  p.add_argument("--source", default="auto", choices=("auto", "text", "jsonl"),
                 help="auto: jsonl if the inputs end in .jsonl/.json(.gz), else text")
  p.add_argument("--text_field", default="text")
  p.add_argument("--document_split", default="blank_lines", choices=DOCUMENT_SPLITS)
  p.add_argument("--record_tokens", type=int, default=4096)
  p.add_argument("--shard_size", type=int, default=16384, help="records per shard")
  args = parser.parse_args(argv)
  source = args.source
  if source == "auto":
    json_like = all(re.search(r"\.jsonl?(\.gz)?$", pattern) for pattern in args.input)
    source = "jsonl" if json_like else "text"
  metadata = prepare(args.input, _tokenizer_from_flag(args.tokenizer), args.output,
                     source=source, text_field=args.text_field,
                     document_split=args.document_split, record_tokens=args.record_tokens,
                     shard_size=args.shard_size)
  print(f"wrote {metadata['num_tokens']} tokens in {metadata['num_records']} records, "
        f"{len(metadata['shards'])} shard(s) to {args.output}")


if __name__ == "__main__":
  main()
