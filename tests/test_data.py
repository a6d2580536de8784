"""Tests for anytime.lm.data and anytime.lm.tokenizer (CPU, no downloads, no shared data)."""

import gzip
import json
import os
import subprocess
import sys

import grain
import numpy as np
import pytest
from scipy import stats

from absl import flags

from anytime.lm import data, documents
from anytime.lm import prepare as prepare_lib
from anytime.lm import tokenizer as tokenizer_lib

BYTE = tokenizer_lib.ByteTokenizer()


def _byte_stream(docs):
  """Independent reference: UTF-8 bytes of each document followed by EOS=256."""
  out = []
  for d in docs:
    out.extend(d.encode("utf-8"))
    out.append(256)
  return np.array(out, np.int64)


def _text_config(tmp_path, train_docs, validation_docs, **overrides):
  """Writes train (two files, one gzipped) and validation files; returns a text config."""
  (tmp_path / "train").mkdir(exist_ok=True)
  (tmp_path / "validation").mkdir(exist_ok=True)
  half = len(train_docs) // 2
  (tmp_path / "train" / "a.txt").write_text("\n\n".join(train_docs[:half]) + "\n",
                                            encoding="utf-8")
  with gzip.open(tmp_path / "train" / "b.txt.gz", "wt", encoding="utf-8") as f:
    f.write("\n \n\n".join(train_docs[half:]))
  (tmp_path / "validation" / "v.txt").write_text("\n\n".join(validation_docs),
                                                 encoding="utf-8")
  config = data.default_config()
  config.source = "text"
  config.train_patterns = (str(tmp_path / "train" / "*.txt*"),)
  config.validation_patterns = (str(tmp_path / "validation" / "*.txt"),)
  config.update(overrides)
  return config


def _docs(n, seed):
  rng = np.random.default_rng(seed)
  letters = list("abcdefghijklmnopqrstuvwxyzéε")  # random words: no two windows coincide
  return [" ".join("".join(rng.choice(letters, 5)) for _ in range(rng.integers(3, 30)))
          + f" #{i}" for i in range(n)]


TRAIN_DOCS = _docs(60, 0)
VALIDATION_DOCS = _docs(12, 1)


@pytest.fixture
def text_config(tmp_path):
  return _text_config(tmp_path, TRAIN_DOCS, VALIDATION_DOCS)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _window_ids(batches, source):
  """Maps every row of every batch back to its window index in ``source``."""
  index = {source[i]["inputs"].tobytes(): i for i in range(len(source))}
  return [index[row.tobytes()] for b in batches for row in b["inputs"]]


# --------------------------------------------------------------------------- tokenizers


def test_byte_tokenizer_round_trip_and_ids():
  text = "héllo\n\tworld ✓"
  ids = BYTE.encode(text)
  np.testing.assert_array_equal(ids, list(text.encode("utf-8")))
  assert BYTE.decode(ids) == text
  assert (BYTE.vocab_size, BYTE.eos_id, BYTE.padded_vocab_size(8)) == (257, 256, 264)
  np.testing.assert_array_equal(BYTE.encode_documents(["a", "bc"]), [97, 256, 98, 99, 256])
  with pytest.raises(ValueError, match="ids must be in"):
    BYTE.decode([300])


def test_bpe_trains_once_saves_and_reuses(tmp_path):
  config = tokenizer_lib.default_config()
  config.kind, config.vocab_size = "bpe", 300
  calls = []

  def texts():
    calls.append(1)
    return iter(TRAIN_DOCS)

  tok = tokenizer_lib.build(config, str(tmp_path), texts)
  assert (tmp_path / "tokenizer.json").exists() and len(calls) == 1
  assert tok.vocab_size <= 300 and tok.eos_id == 0
  text = TRAIN_DOCS[3] + " <|endoftext|> ünïcode"
  ids = tok.encode(text)
  assert tok.decode(ids) == text
  assert tok.eos_id not in ids  # a literal separator string in text stays text
  assert len(ids) < len(text.encode("utf-8"))  # merges learned
  again = tokenizer_lib.build(config, str(tmp_path), texts)
  assert len(calls) == 1 and again.fingerprint == tok.fingerprint
  np.testing.assert_array_equal(again.encode(text), ids)
  config.vocab_size = 400
  with pytest.raises(ValueError, match="trained with"):
    tokenizer_lib.build(config, str(tmp_path), texts)


def test_file_tokenizers(tmp_path):
  config = tokenizer_lib.default_config()
  config.kind, config.vocab_size = "bpe", 280
  tokenizer_lib.build(config, str(tmp_path), lambda: iter(TRAIN_DOCS))
  config.kind, config.path = "file", str(tmp_path / "tokenizer.json")
  tok = tokenizer_lib.build(config)
  assert tok.decode(tok.encode(TRAIN_DOCS[0])) == TRAIN_DOCS[0]

  import sentencepiece  # pylint: disable=g-import-not-at-top
  (tmp_path / "corpus.txt").write_text("\n".join(TRAIN_DOCS * 3), encoding="utf-8")
  sentencepiece.SentencePieceTrainer.train(
      input=str(tmp_path / "corpus.txt"), model_prefix=str(tmp_path / "sp"), vocab_size=60,
      model_type="unigram", minloglevel=2)
  config.path = str(tmp_path / "sp.model")
  sp = tokenizer_lib.build(config)
  assert sp.vocab_size == 60 and sp.eos_id == 2
  assert sp.decode(sp.encode("abc def")) == "abc def"
  stream = sp.encode_documents(["abc", "def"])
  assert list(stream).count(sp.eos_id) == 2 and stream[-1] == sp.eos_id


def test_tokenizer_config_errors(tmp_path):
  config = tokenizer_lib.default_config()
  config.kind = "wordpiece"
  with pytest.raises(ValueError, match="tokenizer.kind"):
    tokenizer_lib.build(config)
  config.kind, config.path = "file", str(tmp_path / "missing.json")
  with pytest.raises(FileNotFoundError, match="missing.json"):
    tokenizer_lib.build(config)
  (tmp_path / "vocab.txt").write_text("x")
  config.path = str(tmp_path / "vocab.txt")
  with pytest.raises(ValueError, match=r"\.json .*\.model"):
    tokenizer_lib.build(config)
  config.kind, config.vocab_size = "bpe", 100
  with pytest.raises(ValueError, match="tokenizer.vocab_size"):
    tokenizer_lib.build(config, None, lambda: iter(["x"]))
  config.vocab_size = 300
  with pytest.raises(ValueError, match="train_texts"):
    tokenizer_lib.build(config, None, None)


# --------------------------------------------------------------------------- text sources


def test_text_stream_matches_reference(text_config):
  np.testing.assert_array_equal(data.load_tokens(text_config, BYTE, "train"),
                                _byte_stream(TRAIN_DOCS))
  np.testing.assert_array_equal(data.load_tokens(text_config, BYTE, "validation"),
                                _byte_stream(VALIDATION_DOCS))
  text_config.document_split = "file"
  assert list(data.load_tokens(text_config, BYTE, "validation")).count(256) == 1


def test_max_bytes_caps_text(text_config):
  text_config.max_bytes = 100
  tokens = data.load_tokens(text_config, BYTE, "train")
  assert np.sum(tokens != 256) == 100
  np.testing.assert_array_equal(tokens[tokens != 256], _byte_stream(TRAIN_DOCS)[
      _byte_stream(TRAIN_DOCS) != 256][:100])


def test_jsonl_source(tmp_path):
  lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(TRAIN_DOCS)]
  (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
  (tmp_path / "val.jsonl").write_text(json.dumps({"text": "x y"}) + "\n", encoding="utf-8")
  config = data.default_config()
  config.source = "jsonl"
  config.train_patterns = (str(tmp_path / "train.jsonl"),)
  config.validation_patterns = (str(tmp_path / "val.jsonl"),)
  np.testing.assert_array_equal(data.load_tokens(config, BYTE), _byte_stream(TRAIN_DOCS))
  config.text_field = "body"
  with pytest.raises(ValueError, match=r"train.jsonl:1: .*'body'"):
    data.load_tokens(config, BYTE)


def test_input_errors_name_the_file(tmp_path, text_config):
  config = text_config.copy_and_resolve_references()
  config.train_patterns = (str(tmp_path / "nowhere" / "*.txt"),)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    data.load_tokens(config, BYTE)
  config.train_patterns = (str(tmp_path / "nope.txt"),)
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    data.load_tokens(config, BYTE)
  (tmp_path / "empty.txt").write_text("  \n\n")
  config.train_patterns = (str(tmp_path / "empty.txt"),)
  with pytest.raises(ValueError, match="empty.txt: file is empty"):
    data.load_tokens(config, BYTE)
  (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
  config.train_patterns = (str(tmp_path / "latin1.txt"),)
  with pytest.raises(ValueError, match="latin1.txt: not valid UTF-8"):
    data.load_tokens(config, BYTE)
  (tmp_path / "bad.txt.gz").write_bytes(b"not gzip")
  config.train_patterns = (str(tmp_path / "bad.txt.gz"),)
  with pytest.raises(ValueError, match="bad.txt.gz: not a valid gzip"):
    data.load_tokens(config, BYTE)
  config.train_patterns = text_config.validation_patterns
  with pytest.raises(ValueError, match="disjoint"):
    data.load_tokens(config, BYTE)


def test_config_errors(text_config):
  for field, value, match in [("source", "csv", "data.source"),
                              ("train_patterns", (), "data.train_patterns"),
                              ("max_bytes", -1, "data.max_bytes"),
                              ("shuffle_seed", 2**40, "data.shuffle_seed"),
                              ("document_split", "lines", "data.document_split")]:
    config = text_config.copy_and_resolve_references()
    config[field] = value
    with pytest.raises(ValueError, match=match):
      data.make_train_iterator(config, BYTE, seq_len=8, global_batch_size=2, seed=0)
  embedded = data.default_config()
  embedded.validation_fraction = 0.0
  with pytest.raises(ValueError, match="validation_fraction"):
    data.load_tokens(embedded, BYTE)
  for kwargs, match in [(dict(seq_len=0), "seq_len"), (dict(global_batch_size=3,
                        process_count=2), "divisible"), (dict(process_index=2,
                        process_count=2), "process_index"), (dict(seq_len=10**6), "fewer")]:
    args = dict(seq_len=8, global_batch_size=2, seed=0) | kwargs
    with pytest.raises(ValueError, match=match):
      data.make_train_iterator(text_config, BYTE, **args)


# --------------------------------------------------------------------------- packing + iterators


def test_windows_lose_no_token(text_config):
  stream = data.load_tokens(text_config, BYTE)
  seq_len = 37
  source = data.PackedWindows(data._MemoryStream(stream), seq_len)
  windows = np.stack([np.concatenate([source[i]["inputs"], source[i]["targets"][-1:]])
                      for i in range(len(source))])
  # Consecutive windows tile the stream; the last one wraps around to its start.
  np.testing.assert_array_equal(windows.ravel(), np.resize(stream, windows.size))
  assert windows.size - len(stream) < seq_len + 1
  for i in range(len(source)):
    np.testing.assert_array_equal(source[i]["targets"][:-1], source[i]["inputs"][1:])


def test_train_batches_shapes_epochs_and_seed(text_config):
  seq_len, batch = 16, 4
  stream = data.load_tokens(text_config, BYTE)
  source = data.PackedWindows(data._MemoryStream(stream), seq_len)
  n = len(source)
  it = data.make_train_iterator(text_config, BYTE, seq_len=seq_len, global_batch_size=batch,
                                seed=3)
  batches = _take(it, (2 * n) // batch + 1)
  assert batches[0]["inputs"].shape == (batch, seq_len) and batches[0]["inputs"].dtype == np.int32
  assert set(batches[0]) == {"inputs", "targets"}
  ids = _window_ids(batches, source)
  assert sorted(ids[:n]) == list(range(n)) and sorted(ids[n:2 * n]) == list(range(n))
  assert ids[:n] != ids[n:2 * n] and ids[:n] != sorted(ids[:n])  # reshuffled every epoch
  same = _take(data.make_train_iterator(text_config, BYTE, seq_len=seq_len,
                                        global_batch_size=batch, seed=3), 3)
  other = _take(data.make_train_iterator(text_config, BYTE, seq_len=seq_len,
                                         global_batch_size=batch, seed=4), 3)
  for a, b in zip(batches, same):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  assert not all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(same, other))


def test_processes_get_disjoint_shares(text_config):
  seq_len, batch, count = 16, 4, 2
  source = data.PackedWindows(data._MemoryStream(data.load_tokens(text_config, BYTE)), seq_len)
  per_process = len(source) // count
  shares = []
  for p in range(count):
    it = data.make_train_iterator(text_config, BYTE, seq_len=seq_len, global_batch_size=batch,
                                  seed=0, process_index=p, process_count=count)
    batches = _take(it, per_process // (batch // count))
    assert batches[0]["inputs"].shape == (batch // count, seq_len)
    shares.append(_window_ids(batches, source))
    assert len(set(shares[-1])) == len(shares[-1])  # one epoch of the share, no repeats
  assert not set(shares[0]) & set(shares[1])


def test_iterator_resume_is_exact(text_config):
  kwargs = dict(seq_len=16, global_batch_size=4, seed=1)
  it = data.make_train_iterator(text_config, BYTE, **kwargs)
  _take(it, 7)
  state = it.get_state()
  expected = _take(it, 30)  # crosses an epoch boundary
  fresh = data.make_train_iterator(text_config, BYTE, **kwargs)
  fresh.set_state(state)
  for a, b in zip(expected, _take(fresh, 30)):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


def test_iterator_checkpoints_through_orbax(tmp_path, text_config):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  kwargs = dict(seq_len=16, global_batch_size=4, seed=2)
  it = data.make_train_iterator(text_config, BYTE, **kwargs)
  _take(it, 5)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.save(5, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    manager.wait_until_finished()
  expected = _take(it, 4)
  fresh = data.make_train_iterator(text_config, BYTE, **kwargs)
  with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
    manager.restore(5, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  for a, b in zip(expected, _take(fresh, 4)):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_eval_batches_fixed_complete_and_sharded(text_config):
  seq_len, batch = 16, 4
  stream = data.load_tokens(text_config, BYTE, "validation")
  batches = data.make_eval_batches(text_config, BYTE, seq_len=seq_len, batch_size=batch,
                                   num_batches=0)
  num_windows = -(-len(stream) // (seq_len + 1))
  assert len(batches) == -(-num_windows // batch)
  # Every real target counted once: a window of k tokens gives k-1 targets.
  assert sum(b["weights"].sum() for b in batches) == len(stream) - num_windows
  real = sorted((b["inputs"][r][0], tuple(b["targets"][r][b["weights"][r] > 0]))
                for b in batches for r in range(batch) if b["weights"][r].any())
  windows = [stream[i:i + seq_len + 1] for i in range(0, len(stream), seq_len + 1)]
  windows = [w for w in windows if len(w) > 1]
  assert real == sorted((w[0], tuple(w[1:])) for w in windows)
  again = data.make_eval_batches(text_config, BYTE, seq_len=seq_len, batch_size=batch,
                                 num_batches=2)
  assert len(again) == 2
  for a, b in zip(batches, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  halves = [data.make_eval_batches(text_config, BYTE, seq_len=seq_len, batch_size=batch,
                                   num_batches=2, process_index=p, process_count=2)
            for p in range(2)]
  for b, h0, h1 in zip(batches, *halves):
    np.testing.assert_array_equal(b["inputs"], np.concatenate([h0["inputs"], h1["inputs"]]))


def test_eval_window_documents_follow_the_batches_rows(text_config):
  seq_len, batch = 16, 4
  docs_bytes = [len(d.encode("utf-8")) + 1 for d in VALIDATION_DOCS]  # + its EOS
  owner = np.repeat(np.arange(len(VALIDATION_DOCS)), docs_bytes)  # reference: token -> doc
  batches = data.make_eval_batches(text_config, BYTE, seq_len=seq_len, batch_size=batch,
                                   num_batches=0)
  documents = data.eval_window_documents(text_config, BYTE, seq_len=seq_len, batch_size=batch,
                                         num_batches=0)
  assert documents.shape == (len(batches) * batch,)
  stream = _byte_stream(VALIDATION_DOCS)
  starts = {tuple(stream[i:i + seq_len + 1]): i for i in range(0, len(stream), seq_len + 1)}
  row = 0
  for b in batches:
    for r in range(batch):
      if not b["weights"][r].any():
        assert documents[row] == -1
      else:
        n = int(b["weights"][r].sum())
        start = starts[tuple(np.concatenate([b["inputs"][r][:1], b["targets"][r][:n]]))]
        expected = np.bincount(owner[start + 1:start + 1 + n]).argmax()  # majority of targets
        assert documents[row] == expected
      row += 1
  assert set(documents[documents >= 0]) == set(range(len(VALIDATION_DOCS)))
  halves = [data.eval_window_documents(text_config, BYTE, seq_len=seq_len, batch_size=batch,
                                       num_batches=2, process_index=p, process_count=2)
            for p in range(2)]
  for b in range(2):
    np.testing.assert_array_equal(
        documents[b * batch:(b + 1) * batch],
        np.concatenate([halves[0][b * 2:(b + 1) * 2], halves[1][b * 2:(b + 1) * 2]]))


def test_unigram_entropy_matches_scipy(text_config):
  reference = _byte_stream(VALIDATION_DOCS)
  expected = stats.entropy(np.bincount(reference))
  assert data.unigram_entropy(text_config, BYTE) == pytest.approx(expected, rel=1e-12)


class CountingTokenizer(tokenizer_lib.ByteTokenizer):
  """Byte tokens, counting the documents it encodes."""

  encoded = 0

  def encode_documents(self, docs):
    self.encoded += len(docs)
    return super().encode_documents(docs)


def test_cache_dir_round_trip(tmp_path, text_config):
  text_config.cache_dir = str(tmp_path / "cache")
  tok = CountingTokenizer()
  first = data.load_tokens(text_config, tok)
  files = list((tmp_path / "cache").glob("tokens-train-*.npy"))
  assert len(files) == 1 and tok.encoded == len(TRAIN_DOCS)
  np.testing.assert_array_equal(data.load_tokens(text_config, tok), first)
  assert tok.encoded == len(TRAIN_DOCS)  # read back from the .npy, not tokenized again


def test_streams_are_cached_only_by_the_callers_cache(text_config):
  tok = CountingTokenizer()
  data.load_tokens(text_config, tok)
  data.load_tokens(text_config, tok)
  assert tok.encoded == 2 * len(TRAIN_DOCS)  # no hidden process-wide cache
  streams = data.StreamCache(max_streams=1)
  tok.encoded = 0
  first = data.load_tokens(text_config, tok, streams=streams)
  again = data.load_tokens(text_config, tok, "train", streams=streams)
  np.testing.assert_array_equal(again, first)
  assert tok.encoded == len(TRAIN_DOCS) and len(streams) == 1
  data.make_eval_batches(text_config, tok, seq_len=16, batch_size=2, num_batches=1,
                         streams=streams)  # validation: evicts train (max_streams=1)
  assert len(streams) == 1
  next(data.make_train_iterator(text_config, tok, seq_len=16, global_batch_size=2, seed=0,
                                streams=streams))
  assert tok.encoded == 2 * len(TRAIN_DOCS) + len(VALIDATION_DOCS)
  data.unigram_entropy(text_config, tok, "train", streams=streams)
  assert tok.encoded == 2 * len(TRAIN_DOCS) + len(VALIDATION_DOCS)
  with pytest.raises(ValueError, match="max_streams"):
    data.StreamCache(max_streams=0)
  with pytest.raises(ValueError, match="streams must be"):
    data.load_tokens(text_config, tok, streams={})


def test_worker_processes_need_parsed_flags_and_parse_none(text_config, monkeypatch):
  monkeypatch.setattr(flags.FlagValues, "is_parsed", lambda self: False)
  marked = []
  monkeypatch.setattr(flags.FlagValues, "mark_as_parsed", lambda self: marked.append(self))
  text_config.worker_count = 2
  with pytest.raises(ValueError, match=r"data.worker_count=2 .*absl.app.run"):
    data.make_train_iterator(text_config, BYTE, seq_len=8, global_batch_size=2, seed=0)
  assert not marked


# --------------------------------------------------------------------------- ArrayRecord


def test_prepare_array_record_matches_text_source(tmp_path, text_config):
  for split in ("train", "validation"):
    values = flags.FlagValues()
    prepare_lib.define_flags(values)
    values(["prepare", "--input", text_config[f"{split}_patterns"][0], "--tokenizer", "byte",
            "--output", str(tmp_path / f"ar_{split}"), "--record_tokens", "50",
            "--shard_size", "7"])
    assert values.source == "auto"
    prepare_lib.prepare_from_flags(values)
  meta = json.loads((tmp_path / "ar_train" / "metadata.json").read_text())
  assert len(meta["shards"]) > 1 and meta["num_tokens"] == len(_byte_stream(TRAIN_DOCS))
  config = text_config.copy_and_resolve_references()
  config.source = "array_record"
  config.train_patterns = (str(tmp_path / "ar_train"),)
  config.validation_patterns = (str(tmp_path / "ar_validation"),)
  np.testing.assert_array_equal(data.load_tokens(config, BYTE), _byte_stream(TRAIN_DOCS))
  kwargs = dict(seq_len=33, global_batch_size=4, seed=5)
  for a, b in zip(_take(data.make_train_iterator(config, BYTE, **kwargs), 12),
                  _take(data.make_train_iterator(text_config, BYTE, **kwargs), 12)):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  eval_ar = data.make_eval_batches(config, BYTE, seq_len=33, batch_size=4, num_batches=0)
  eval_text = data.make_eval_batches(text_config, BYTE, seq_len=33, batch_size=4,
                                     num_batches=0)
  for a, b in zip(eval_ar, eval_text):
    np.testing.assert_array_equal(a["weights"], b["weights"])
  other = tokenizer_lib.default_config()
  other.kind, other.vocab_size = "bpe", 280
  bpe = tokenizer_lib.build(other, None, lambda: iter(TRAIN_DOCS))
  with pytest.raises(ValueError, match="prepared with tokenizer"):
    data.load_tokens(config, bpe)
  with pytest.raises(ValueError, match="already holds"):
    prepare_lib.prepare(text_config.train_patterns, BYTE, str(tmp_path / "ar_train"))
  config.validation_patterns = config.train_patterns
  with pytest.raises(ValueError, match="disjoint"):
    data.load_tokens(config, BYTE)
  config.train_patterns = (str(tmp_path / "no_dir"),)
  with pytest.raises(FileNotFoundError, match="no_dir"):
    data.load_tokens(config, BYTE)


# --------------------------------------------------------------------------- embedded corpus


def test_embedded_corpus_split_is_stable_and_disjoint():
  files = data.embedded_files()
  relative = [r for r, _ in files]
  assert relative == sorted(relative) and len(files) > 100
  assert not any("/test/" in f"/{r}" or "site-packages" in r for r in relative)
  config = data.default_config()
  validation = [r for r in relative if documents.in_validation(r, config.validation_fraction)]
  assert 0.02 < len(validation) / len(relative) < 0.10
  assert data.embedded_files() == files
  train_docs = set(data.iter_documents(config, "train"))
  validation_docs = list(data.iter_documents(config, "validation"))
  assert validation_docs and not train_docs & set(validation_docs)
  tokens = data.load_tokens(config, BYTE, "train")
  num_train_docs = sum(1 for _ in data.iter_documents(config, "train"))
  assert len(tokens) > 1_000_000 and np.sum(tokens == 256) == num_train_docs
  batch = next(data.make_train_iterator(config, BYTE, seq_len=64, global_batch_size=8, seed=0))
  assert batch["inputs"].shape == (8, 64)
  assert 2.0 < data.unigram_entropy(config, BYTE) < np.log(257)


@pytest.mark.slow
def test_prepare_command_line(tmp_path, text_config):
  """``python -m anytime.lm.prepare``: an absl command; importing the module defines no flag."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": repo}
  out = tmp_path / "prepared"
  command = [sys.executable, "-m", "anytime.lm.prepare", "--input",
             text_config.validation_patterns[0], "--tokenizer", "byte", "--output", str(out)]
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert f"wrote {len(_byte_stream(VALIDATION_DOCS))} tokens" in result.stdout
  assert json.loads((out / "metadata.json").read_text())["num_records"] == 1
  bad = subprocess.run(command[:3] + ["--tokenizer", "byte", "--output", str(tmp_path / "x")],
                       env=env, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--input" in bad.stderr
  assert "input" not in flags.FLAGS  # this process imported the module: no flag defined
