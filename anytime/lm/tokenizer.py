"""Tokenizers for the LM trainer: bytes, a locally trained byte-level BPE, or a user's file.

``build(config, workdir, train_texts)`` returns a ``Tokenizer`` with ``vocab_size``, ``eos_id``
(the document separator), ``encode``/``encode_batch``/``decode`` and ``encode_documents`` (a
whole corpus as one flat token stream with ``eos_id`` after every document).

Kinds (``config.kind``):
  * ``"byte"``: UTF-8 bytes 0..255 plus EOS = 256, ``vocab_size = 257`` (not padded; a model
    that wants a multiple of 8/128 pads its embedding table, see ``padded_vocab_size``).
  * ``"bpe"``: a byte-level BPE trained with HF ``tokenizers`` on at most ``train_bytes`` of
    training text, saved once as ``workdir/tokenizer.json`` and reused on resume.
  * ``"file"``: ``path`` to a HF ``tokenizer.json`` or a sentencepiece ``.model`` (e.g. T5's).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_collections
import numpy as np
from etils import epath

KINDS = ("byte", "bpe", "file")
BPE_EOS_TOKEN = "<|endoftext|>"
# Tried in order when a tokenizer.json names no ``eos_token`` in the config.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>", "[SEP]", "<|end_of_text|>")
_BPE_SETTINGS_FILE = "tokenizer_settings.json"


def default_config() -> ml_collections.ConfigDict:
  """Tokenizer settings: ``kind``, ``vocab_size`` and ``train_bytes`` (bpe), ``path`` (file)."""
  return ml_collections.ConfigDict(
      dict(kind="byte", vocab_size=4096, train_bytes=4_000_000, path="", eos_token="")
  )


class Tokenizer:
  """Common interface; subclasses implement ``encode``, ``encode_batch`` and ``decode``."""

  vocab_size: int
  eos_id: int
  fingerprint: str  # Identifies the vocabulary; stored next to pre-tokenized data.

  def encode(self, text: str) -> np.ndarray:
    """Token ids of ``text`` (int32, no EOS added)."""
    raise NotImplementedError

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [self.encode(t) for t in texts]

  def decode(self, ids: Iterable[int]) -> str:
    raise NotImplementedError

  def encode_documents(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """One flat stream: ``doc_0 EOS doc_1 EOS ...`` (uint16 if the vocab fits, else int32)."""
    dtype = token_dtype(self.vocab_size)
    eos = np.array([self.eos_id], dtype)
    pieces = []
    for start in range(0, len(texts), batch_size):
      for ids in self.encode_batch(list(texts[start:start + batch_size])):
        pieces.append(np.asarray(ids, dtype))
        pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.zeros((0,), dtype)

  def padded_vocab_size(self, multiple: int = 128) -> int:
    """``vocab_size`` rounded up to a multiple (embedding tables run faster that way)."""
    if multiple < 1:
      raise ValueError(f"multiple must be a positive integer, got {multiple!r}")
    return -(-self.vocab_size // multiple) * multiple

  def __repr__(self) -> str:
    return (f"{type(self).__name__}(vocab_size={self.vocab_size}, eos_id={self.eos_id}, "
            f"fingerprint={self.fingerprint!r})")


def token_dtype(vocab_size: int) -> np.dtype:
  """Smallest unsigned dtype used to store token ids of a vocabulary."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


class ByteTokenizer(Tokenizer):
  """UTF-8 bytes are tokens 0..255; EOS is 256."""

  def __init__(self):
    self.vocab_size = 257
    self.eos_id = 256
    self.fingerprint = "byte-v1"

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32)

  def encode_documents(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
    del batch_size
    pieces = []
    eos = np.array([self.eos_id], np.uint16)
    for text in texts:
      pieces.append(np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.uint16))
      pieces.append(eos)
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.uint16)

  def decode(self, ids: Iterable[int]) -> str:
    out, run = [], bytearray()
    for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).ravel():
      i = int(i)
      if i == self.eos_id:
        out.append(run.decode("utf-8", errors="replace") + BPE_EOS_TOKEN)
        run = bytearray()
      elif 0 <= i < 256:
        run.append(i)
      else:
        raise ValueError(f"ids must be in [0, {self.vocab_size}), got {i}")
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


class HuggingFaceTokenizer(Tokenizer):
  """A HF ``tokenizers.Tokenizer`` (tokenizer.json); special tokens in text stay plain text."""

  def __init__(self, tok: Any, eos_id: int, fingerprint: str):
    self._tok = tok
    # Text that happens to contain "<|endoftext|>" must not turn into the separator.
    if hasattr(tok, "encode_special_tokens"):
      tok.encode_special_tokens = True
    self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
    self.eos_id = int(eos_id)
    self.fingerprint = fingerprint

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    encodings = self._tok.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)


class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece ``.model`` file (e.g. the T5 tokenizer); EOS is the model's ``eos_id``."""

  def __init__(self, processor: Any, fingerprint: str):
    self._sp = processor
    self.vocab_size = int(processor.get_piece_size())
    self.eos_id = int(processor.eos_id())
    self.fingerprint = fingerprint

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._sp.encode(text), np.int32)

  def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
    return [np.asarray(ids, np.int32) for ids in self._sp.encode(list(texts))]

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode([int(i) for i in ids])


# --------------------------------------------------------------------------- loading


def _fingerprint(kind: str, data: bytes) -> str:
  return f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}"


def load_file(path: str, eos_token: str = "") -> Tokenizer:
  """Loads a HF ``tokenizer.json`` or a sentencepiece ``.model``; FileNotFoundError if absent."""
  p = epath.Path(path)
  if not path or not p.exists():
    raise FileNotFoundError(f"tokenizer.path {path!r} does not exist (want a tokenizer.json "
                            "or a sentencepiece .model file)")
  data = p.read_bytes()
  if p.name.endswith(".json"):
    import tokenizers  # pylint: disable=g-import-not-at-top
    try:
      tok = tokenizers.Tokenizer.from_str(data.decode("utf-8"))
    except Exception as e:  # tokenizers raises its own Exception subclass
      raise ValueError(f"tokenizer.path {path!r} is not a valid tokenizer.json: {e}") from e
    candidates = (eos_token,) if eos_token else _EOS_CANDIDATES
    ids = [tok.token_to_id(t) for t in candidates]
    found = [i for i in ids if i is not None]
    if not found:
      raise ValueError(f"tokenizer.path {path!r} has no end-of-text token among {candidates}; "
                       "set tokenizer.eos_token")
    return HuggingFaceTokenizer(tok, found[0], _fingerprint("json", data))
  if p.name.endswith(".model"):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    try:
      sp = sentencepiece.SentencePieceProcessor(model_proto=data)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError
      raise ValueError(f"tokenizer.path {path!r} is not a valid sentencepiece model: {e}") from e
    if eos_token:
      eos = sp.piece_to_id(eos_token)
      if eos == sp.unk_id() and eos_token != sp.id_to_piece(sp.unk_id()):
        raise ValueError(f"tokenizer.eos_token {eos_token!r} is not in {path!r}")
    elif sp.eos_id() < 0:
      raise ValueError(f"tokenizer.path {path!r} defines no EOS; set tokenizer.eos_token")
    result = SentencePieceTokenizer(sp, _fingerprint("spm", data))
    if eos_token:
      result.eos_id = int(eos)
    return result
  raise ValueError(f"tokenizer.path {path!r} must end in .json (HF tokenizers) or .model "
                   "(sentencepiece)")


def train_bpe(texts: Iterable[str], vocab_size: int, train_bytes: int) -> Tokenizer:
  """Trains a byte-level BPE (special token ``<|endoftext|>`` = id 0) on <= ``train_bytes``."""
  from tokenizers import Tokenizer as HFTokenizer  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers, trainers

  def limited():
    used = 0
    for text in texts:
      if used >= train_bytes:
        return
      raw = text.encode("utf-8")[:train_bytes - used]
      used += len(raw)
      yield raw.decode("utf-8", errors="ignore")

  tok = HFTokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=[BPE_EOS_TOKEN], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(limited(), trainer=trainer)
  data = tok.to_str().encode("utf-8")
  return HuggingFaceTokenizer(tok, tok.token_to_id(BPE_EOS_TOKEN), _fingerprint("json", data))


def _validate(config: ml_collections.ConfigDict) -> None:
  for key in ("kind", "vocab_size", "train_bytes", "path", "eos_token"):
    if key not in config:
      raise ValueError(f"tokenizer.{key} is missing; start from tokenizer.default_config()")
  if config.kind not in KINDS:
    raise ValueError(f"tokenizer.kind must be one of {KINDS}, got {config.kind!r}")
  if config.kind == "bpe":
    if isinstance(config.vocab_size, bool) or not isinstance(config.vocab_size, int) or not (
        257 <= config.vocab_size <= 2**20):
      raise ValueError(f"tokenizer.vocab_size must be an int in [257, 2**20] for bpe, got "
                       f"{config.vocab_size!r}")
    if not isinstance(config.train_bytes, int) or config.train_bytes < 1:
      raise ValueError(f"tokenizer.train_bytes must be a positive int, got {config.train_bytes!r}")
  if config.kind == "file" and not config.path:
    raise ValueError("tokenizer.path must name a tokenizer.json or .model file for kind='file'")


def build(
    config: ml_collections.ConfigDict,
    workdir: str | None = None,
    train_texts: Callable[[], Iterable[str]] | None = None,
) -> Tokenizer:
  """Tokenizer from ``config``; a bpe is trained once and kept as ``workdir/tokenizer.json``.

  ``train_texts`` (e.g. ``anytime.lm.data.training_texts(data_config)``) is only called when a
  bpe has to be trained; a bpe already in ``workdir`` must match ``vocab_size``/``train_bytes``.
  """
  _validate(config)
  if config.kind == "byte":
    return ByteTokenizer()
  if config.kind == "file":
    return load_file(config.path, config.eos_token)
  settings = {"kind": "bpe", "vocab_size": int(config.vocab_size),
              "train_bytes": int(config.train_bytes)}
  if workdir:
    path = epath.Path(workdir) / "tokenizer.json"
    settings_path = epath.Path(workdir) / _BPE_SETTINGS_FILE
    if path.exists():
      if settings_path.exists():
        saved = json.loads(settings_path.read_text())
        if saved != settings:
          raise ValueError(f"{path} was trained with {saved}, but the config asks for "
                           f"{settings}; use a fresh workdir or matching tokenizer settings")
      return load_file(os.fspath(path))
  if train_texts is None:
    raise ValueError("tokenizer.kind='bpe' needs train_texts to train a new tokenizer")
  tok = train_bpe(train_texts(), config.vocab_size, config.train_bytes)
  if workdir:
    epath.Path(workdir).mkdir(parents=True, exist_ok=True)
    # Write-then-rename so a concurrent reader (another host) never sees half a file.
    tmp = epath.Path(workdir) / f"tokenizer.json.tmp{os.getpid()}"
    tmp.write_text(tok._tok.to_str())  # pylint: disable=protected-access
    tmp.rename(path)
    settings_path.write_text(json.dumps(settings))
    return load_file(os.fspath(path))
  return tok
