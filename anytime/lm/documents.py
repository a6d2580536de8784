"""Files -> documents: glob patterns, UTF-8 text (``.gz`` too), blank-line or JSON-lines
documents, and the embedded corpus (the Python standard library's own sources). No config here:
``anytime.lm.data`` applies a data config to these."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import sysconfig
from collections.abc import Iterable, Iterator, Sequence

from etils import epath

DOCUMENT_SPLITS = ("blank_lines", "file")
_EXCLUDED_STDLIB_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"})
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n")


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


def read_text(path: epath.Path) -> str:
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


def text_documents(text: str, document_split: str) -> list[str]:
  """The documents of a text file: all of it (``"file"``) or its blank-line-separated blocks."""
  if document_split == "file":
    return [text]
  return [d.strip("\r\n") for d in _BLANK_LINES.split(text) if d.strip()]


def jsonl_documents(path: epath.Path, text: str, text_field: str) -> list[str]:
  """The non-empty ``text_field`` strings of a JSON-lines file; ValueError naming a bad line."""
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


def in_validation(relative_path: str, fraction: float) -> bool:
  """Whether an embedded file is held out: a stable hash of its path falls below ``fraction``."""
  digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def cap_bytes(docs: Iterable[str], max_bytes: int) -> Iterator[str]:
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
