"""Prepared token data: ``prepare`` tokenizes text/jsonl files once into ArrayRecord shards
(+ ``metadata.json``), ``open_prepared`` reads them back record by record (``data.source=
"array_record"``), for corpora too big to tokenize in memory at every start.

    python -m anytime.lm.prepare --input 'c4/*.json.gz' --tokenizer t5.model --output DIR

``--tokenizer`` is ``byte``, a ``tokenizer.json`` or a sentencepiece ``.model``; ``--source auto``
reads ``.jsonl``/``.json`` (``.gz``) inputs as JSON lines, others as text.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import app, flags
from etils import epath

from anytime.lm import documents
from anytime.lm import tokenizer as tokenizer_lib

METADATA_FILE = "metadata.json"
TOKENS_FORMAT = "anytime.lm.data.tokens/v1"  # metadata.json["format"]; unchanged since v1


def _check_positive(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
  return int(value)


# --------------------------------------------------------------------------- reading


class ArrayRecordStream:
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


def open_prepared(patterns: Sequence[str], field: str,
                  tok: tokenizer_lib.Tokenizer) -> ArrayRecordStream:
  """The stream of the one directory ``patterns`` name; refuses one prepared with another
  tokenizer (``field`` names the config field in messages)."""
  dirs = []
  for pattern in patterns:
    path = epath.Path(pattern)
    if not any(c in pattern for c in "*?["):
      if not path.exists():
        raise FileNotFoundError(f"{field}: {pattern!r} does not exist")
      dirs.append(path if path.is_dir() else path.parent)
    else:
      found = documents.expand_patterns([pattern], field)
      dirs.extend(p if p.is_dir() else p.parent for p in found)
  dirs = sorted({os.fspath(d): d for d in dirs}.values(), key=os.fspath)
  if len(dirs) != 1:
    raise ValueError(f"{field} must name exactly one directory written by `prepare`, got "
                     f"{[os.fspath(d) for d in dirs]}")
  meta_path = dirs[0] / METADATA_FILE
  if not meta_path.exists():
    raise FileNotFoundError(f"{field}: {os.fspath(meta_path)} does not exist; write the "
                            "directory with `python -m anytime.lm.prepare`")
  meta = json.loads(meta_path.read_text())
  if meta.get("format") != TOKENS_FORMAT:
    raise ValueError(f"{os.fspath(meta_path)}: format {meta.get('format')!r}, want "
                     f"{TOKENS_FORMAT!r}")
  if meta["tokenizer"] != tok.fingerprint or meta["vocab_size"] != tok.vocab_size:
    raise ValueError(f"{os.fspath(dirs[0])} was prepared with tokenizer {meta['tokenizer']} "
                     f"(vocab {meta['vocab_size']}), but data.tokenizer gives {tok!r}")
  if meta["num_tokens"] < 1:
    raise ValueError(f"{os.fspath(dirs[0])} holds no tokens")
  return ArrayRecordStream(dirs[0], meta)


# --------------------------------------------------------------------------- writing


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
  if document_split not in documents.DOCUMENT_SPLITS:
    raise ValueError(f"document_split must be one of {documents.DOCUMENT_SPLITS}, got "
                     f"{document_split!r}")
  record_tokens = _check_positive("record_tokens", record_tokens)
  shard_size = _check_positive("shard_size", shard_size)
  files = documents.expand_patterns(list(input_patterns), "input_patterns")
  out = epath.Path(output_dir)
  if (out / METADATA_FILE).exists():
    raise ValueError(f"output_dir {output_dir!r} already holds prepared data; pick a new one")
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
    text = documents.read_text(path)
    docs = (documents.jsonl_documents(path, text, text_field) if source == "jsonl"
            else documents.text_documents(text, document_split))
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
  metadata = dict(format=TOKENS_FORMAT, dtype=dtype.name, record_tokens=record_tokens,
                  num_tokens=num_tokens, num_records=num_records, shards=shards,
                  vocab_size=tokenizer.vocab_size, eos_id=tokenizer.eos_id,
                  tokenizer=tokenizer.fingerprint, inputs=[os.fspath(f) for f in files])
  (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
  return metadata


# --------------------------------------------------------------------------- command line


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command's flags, defined only when it runs (importing this module defines none)."""
  flags.DEFINE_multi_string("input", None, "file or glob; repeatable", required=True,
                            flag_values=flag_values)
  flags.DEFINE_string("tokenizer", None, "'byte', a tokenizer.json or a sentencepiece .model",
                      required=True, flag_values=flag_values)
  flags.DEFINE_string("output", None, "new directory for the shards and metadata.json",
                      required=True, flag_values=flag_values)
  flags.DEFINE_enum("source", "auto", ["auto", "text", "jsonl"],
                    "auto: jsonl if every input ends in .jsonl/.json(.gz), else text",
                    flag_values=flag_values)
  flags.DEFINE_string("text_field", "text", "jsonl: the field holding the document",
                      flag_values=flag_values)
  flags.DEFINE_enum("document_split", "blank_lines", list(documents.DOCUMENT_SPLITS),
                    "text: a document per blank-line-separated block or per file",
                    flag_values=flag_values)
  flags.DEFINE_integer("record_tokens", 4096, "tokens per record", lower_bound=1,
                       flag_values=flag_values)
  flags.DEFINE_integer("shard_size", 16384, "records per shard", lower_bound=1,
                       flag_values=flag_values)


def prepare_from_flags(values: flags.FlagValues) -> dict[str, Any]:
  """Runs ``prepare`` with parsed flags (``define_flags``); returns the metadata."""
  source = values.source
  if source == "auto":
    json_like = all(re.search(r"\.jsonl?(\.gz)?$", pattern) for pattern in values.input)
    source = "jsonl" if json_like else "text"
  tokenizer = (tokenizer_lib.ByteTokenizer() if values.tokenizer == "byte"
               else tokenizer_lib.load_file(values.tokenizer))
  return prepare(values.input, tokenizer, values.output, source=source,
                 text_field=values.text_field, document_split=values.document_split,
                 record_tokens=values.record_tokens, shard_size=values.shard_size)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}; every option is a --flag")
  metadata = prepare_from_flags(flags.FLAGS)
  print(f"wrote {metadata['num_tokens']} tokens in {metadata['num_records']} records, "
        f"{len(metadata['shards'])} shard(s) to {flags.FLAGS.output}")


def run() -> None:
  """``python -m anytime.lm.prepare --input GLOB --tokenizer T --output DIR``."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
