"""decoder_for: token texts from an explicit tokenizer.json or the recording's model directory."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
import pytest

from parity import differ
from parity.differ.testing import log_softmax
from parity.errors import UsageError
from parity.schemas import Store

tokenizers = pytest.importorskip("tokenizers")
VOCAB = {"hello": 0, "world": 1, "<eos>": 2, " the": 3}


@pytest.fixture
def tok_dir(tmp_path):
    from tokenizers.models import WordLevel

    tok = tokenizers.Tokenizer(WordLevel(dict(VOCAB), unk_token="hello"))
    tok.add_special_tokens(["<eos>"])
    d = tmp_path / "model"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture
def store(make_store, rng):
    path, _ = make_store([log_softmax(rng.standard_normal((3, 8))).astype(np.float32)])
    return Store.open(path)


def with_engine_args(store: Store, **args) -> Store:
    m = store.manifest
    store.manifest = dataclasses.replace(m, device=dataclasses.replace(m.device, engine_args=args))
    return store


def test_explicit_file_or_directory(tok_dir, store):
    for where in (tok_dir, tok_dir / "tokenizer.json", str(tok_dir)):
        decode = differ.decoder_for(store, where)
        assert [decode(i) for i in range(4)] == ["hello", "world", "<eos>", " the"]  # special tokens kept
    assert differ.decoder_for(None, tok_dir)(1) == "world"


def test_bad_explicit_path_is_an_error(tmp_path, store):
    with pytest.raises(UsageError, match="no tokenizer.json"):
        differ.decoder_for(store, tmp_path / "nowhere")
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(UsageError, match="cannot load"):
        differ.decoder_for(store, bad)


def test_from_the_manifest(tok_dir, store, tmp_path):
    assert differ.decoder_for(store) is None  # synthetic stores name no model directory
    assert differ.decoder_for(with_engine_args(store, model=str(tok_dir)))(0) == "hello"
    # "tokenizer" wins over "model"; a directory that is not here is skipped
    other = tmp_path / "other"
    other.mkdir()
    (other / "tokenizer.json").write_text((tok_dir / "tokenizer.json").read_text().replace('"hello"', '"HELLO"'))
    assert differ.decoder_for(with_engine_args(store, tokenizer=str(other), model=str(tok_dir)))(0) == "HELLO"
    assert differ.decoder_for(with_engine_args(store, tokenizer="/gone", model=str(tok_dir)))(0) == "hello"
    assert differ.decoder_for(with_engine_args(store, model="/gone/too")) is None
    # by path, too
    assert differ.decoder_for(store.path) is None


def test_texts_are_cached(tok_dir, store, monkeypatch):
    decode = differ.decoder_for(store, tok_dir)
    calls = []
    original = tokenizers.Tokenizer.decode
    assert decode(3) == " the"
    # a second call does not reach the tokenizer
    monkeypatch.setattr(tokenizers.Tokenizer, "decode", lambda *a, **k: calls.append(a) or original(*a, **k))
    assert decode(3) == " the" and calls == []


def test_without_the_tokenizers_library(tok_dir, store, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import fails
    assert differ.decoder_for(store, tok_dir) is None
    assert differ.decoder_for(with_engine_args(store, model=str(tok_dir))) is None


def test_diff_with_the_decoder(tok_dir, make_store, rng):
    rows = log_softmax(rng.standard_normal((5, 4)) * 3).astype(np.float32)
    ref, m = make_store([rows])
    cand, _ = make_store([rows + 0.0], tokens=[list(np.argmax(rows, axis=1))], run={"golden": m.digest})
    decode = differ.decoder_for(None, tok_dir)
    r = differ.diff(ref, cand, decode=decode, details=True)
    assert r.worst[0]["token_text"] in VOCAB
    assert set(r.token_texts) == {0, 1, 2, 3} and r.token_texts[3] == " the"
