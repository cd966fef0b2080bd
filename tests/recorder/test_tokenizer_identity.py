"""The tokenizer digest is semantic (schema 2): re-saved tokenizers keep it, real changes change it.

NPU hosts often hold a re-saved copy of the model directory whose tokenizer
files differ byte for byte but tokenize identically. These tests build such
copies of the tiny model's tokenizer, and copies that really tokenize
differently, without starting an engine.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from parity.errors import GoldenMismatchError
from parity.recorder.inputs import legacy_request_key, legacy_tokenizer_digest, tokenizer_digest, tokenizer_identity
from parity.recorder.plan import RecordConfig, plan_recording
from parity.schemas import GENERATED, Device, Manifest, SequenceInfo, Store, StoreWriter

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")
PROMPTS = ["Hello, my name is", "The capital of France is"]


def load(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def tokenizer_copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy(src / name, dst / name)
    return dst


def edit_json(path: Path, edit, **dump) -> None:
    data = json.loads(path.read_text())
    data = edit(data) or data
    path.write_text(json.dumps(data, **dump))


def reversed_keys(obj):
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(obj, dict):
        return {k: reversed_keys(obj[k]) for k in reversed(list(obj))}
    if isinstance(obj, list):
        return [reversed_keys(v) for v in obj]
    return obj


def resave_with_byte_changes(src: Path, dst: Path) -> Path:
    """What a conversion tool does: save_pretrained, then files re-written differently with the same meaning."""
    load(src).save_pretrained(dst)
    edit_json(dst / "tokenizer.json", reversed_keys, indent=4, ensure_ascii=True)
    edit_json(dst / "tokenizer_config.json", lambda c: reversed_keys({
        **c,
        "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": True,
        "padding_side": "left",
        "add_bos_token": False,  # as it already is: written out explicitly by some tools
    }), indent=1)
    (dst / "special_tokens_map.json").unlink(missing_ok=True)
    return dst


@pytest.fixture()
def original(tiny_model, tmp_path):
    """The tiny model's tokenizer with a special_tokens_map.json, as older transformers wrote it."""
    d = tokenizer_copy(tiny_model, tmp_path / "original")
    (d / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}, indent=2))
    return d


def test_resaved_and_reformatted_tokenizer_keeps_its_digest(tiny_model, original, tmp_path):
    resaved = resave_with_byte_changes(original, tmp_path / "resaved")
    assert not (resaved / "special_tokens_map.json").exists()
    # The byte-level digest of schema 1 sees two different tokenizers...
    assert legacy_tokenizer_digest(resaved) != legacy_tokenizer_digest(original)
    # ...but they tokenize identically, and the digest says so.
    a, b = load(original), load(resaved)
    assert [a(p)["input_ids"] for p in PROMPTS] == [b(p)["input_ids"] for p in PROMPTS]
    assert tokenizer_digest(b) == tokenizer_digest(a) == tokenizer_digest(load(tiny_model))
    assert tokenizer_digest(resaved) == tokenizer_digest(a)  # a directory is loaded the same way


def test_sections_that_do_not_decide_ids_are_left_out(original, tmp_path):
    # Not padding: transformers takes the pad token from it, and the pad id is covered.
    d = tokenizer_copy(original, tmp_path / "other")

    def decode_only(t):
        t["decoder"] = {"type": "Fuse"}
        t["truncation"] = {"direction": "Right", "max_length": 3, "strategy": "LongestFirst", "stride": 0}
        # Prompts are single sequences: the template for pairs never applies.
        t["post_processor"]["pair"] = [{"Sequence": {"id": "B", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 1}}]

    edit_json(d / "tokenizer.json", decode_only)
    edit_json(d / "tokenizer_config.json", lambda c: c.update(tokenizer_class="PreTrainedTokenizerFast"))
    assert tokenizer_digest(d) == tokenizer_digest(original)


def _drop_first_merge(t):
    t["model"]["merges"].pop(0)


def _swap_two_ids(t):
    vocab = t["model"]["vocab"]
    a, b = [tok for tok, i in vocab.items() if i in (300, 301)]
    vocab[a], vocab[b] = vocab[b], vocab[a]


def _lowercase(t):
    t["normalizer"] = {"type": "Lowercase"}


def _add_special_token(d: Path) -> None:
    tok = load(d)
    tok.add_special_tokens({"additional_special_tokens": ["<|extra|>"]})
    tok.save_pretrained(d)


def _add_bos(d: Path) -> None:
    tok = load(d)
    tok.add_bos_token = True
    tok.save_pretrained(d)
    assert load(d)("Hello")["input_ids"][0] == tok.bos_token_id  # the change is real


def _eos_is_bos(d: Path) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        edit_json(d / name, lambda c: c.update(eos_token="<s>"))


CHANGES = {
    "merge removed": lambda d: edit_json(d / "tokenizer.json", _drop_first_merge),
    "two vocabulary ids swapped": lambda d: edit_json(d / "tokenizer.json", _swap_two_ids),
    "lowercasing normalizer": lambda d: edit_json(d / "tokenizer.json", _lowercase),
    "special token added": _add_special_token,
    "add_bos_token applied": _add_bos,
    "eos token changed": _eos_is_bos,
    # transformers-level only: the backend is untouched, the encoding of "<s>" in a prompt is not
    "special tokens split": lambda d: edit_json(d / "tokenizer_config.json",
                                                lambda c: c.update(split_special_tokens=True)),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_real_change_in_tokenization_changes_the_digest(original, tmp_path, change):
    d = tokenizer_copy(original, tmp_path / "changed")
    CHANGES[change](d)
    assert tokenizer_digest(d) != tokenizer_digest(original)


def _probed_ids(d: Path) -> set[int]:
    return {i for ids in tokenizer_identity(load(d))["encodings"] for i in ids}


def _swap_two_unprobed_ids(d: Path) -> None:
    probed = _probed_ids(d)

    def swap(t):
        vocab = t["model"]["vocab"]
        a, b = [tok for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i > 255 and i not in probed][:2]
        vocab[a], vocab[b] = vocab[b], vocab[a]

    edit_json(d / "tokenizer.json", swap)


def _drop_an_unprobed_merge(d: Path) -> None:
    probed = _probed_ids(d)

    def drop(t):
        vocab, merges = t["model"]["vocab"], t["model"]["merges"]
        # The lowest-priority merge whose result no probe produced: no other merge builds on it.
        k = max(k for k, (a, b) in enumerate(merges) if vocab[a + b] not in probed)
        del merges[k]

    edit_json(d / "tokenizer.json", drop)


def _lstrip_eos(t):
    for added in t["added_tokens"]:
        if added["content"] == "</s>":
            added["lstrip"] = True


SECTION_ONLY_CHANGES = {
    "two vocabulary ids no probe produces swapped": _swap_two_unprobed_ids,
    "a merge no probe uses removed": _drop_an_unprobed_merge,
    "normalizer for a character no probe holds": lambda d: edit_json(d / "tokenizer.json", lambda t: t.update(
        normalizer={"type": "Replace", "pattern": {"String": "\u00a7"}, "content": "S"})),
    "added token strips spaces on its left": lambda d: edit_json(d / "tokenizer.json", _lstrip_eos),
}


@pytest.mark.parametrize("change", list(SECTION_ONLY_CHANGES))
def test_sections_cover_changes_the_probe_texts_miss(original, tmp_path, change):
    # The probe encodings are a second line of defence; each section must
    # catch a change in it on its own.
    d = tokenizer_copy(original, tmp_path / "changed")
    SECTION_ONLY_CHANGES[change](d)
    assert tokenizer_identity(load(d))["encodings"] == tokenizer_identity(load(original))["encodings"]
    assert tokenizer_digest(d) != tokenizer_digest(original)


def test_merges_compare_equal_in_the_old_and_new_serialisation():
    from parity.recorder.inputs import _model_section

    old = {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}  # tokenizers < 0.20
    assert _model_section(old) == _model_section({**old, "merges": [["a", "b"]]})
    assert _model_section(old) != _model_section({**old, "merges": [["ab", "b"]]})


def test_model_options_a_newer_tokenizers_writes_at_their_off_value_are_ignored():
    from parity.recorder.inputs import _model_section

    older = {"type": "BPE", "vocab": {"a": 0}, "merges": [], "dropout": None, "fuse_unk": False}
    newer = {**older, "ignore_merges": False, "byte_fallback": False}
    assert _model_section(older) == _model_section(newer)
    assert _model_section(older) != _model_section({**older, "ignore_merges": True})


def test_spec_lists_the_probe_texts_the_code_encodes():
    import re

    from parity.recorder.inputs import PROBE_TEXTS

    spec = (Path(__file__).parents[2] / "schemas" / "SPEC.md").read_text()
    block = re.search(r"PROBE_TEXTS.*?```json\n(.*?)```", spec, re.S).group(1)
    assert json.loads(block) == list(PROBE_TEXTS)


def test_sentencepiece_only_directory_converts_and_matches_its_fast_resave(tmp_path):
    import sentencepiece as spm

    from parity.recorder.tinymodel import CORPUS

    sp = tmp_path / "sp"
    sp.mkdir()
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines() * 4), model_writer=model, vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )
    (sp / "tokenizer.model").write_bytes(model.getvalue())
    (sp / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    converted = load(sp)
    assert tokenizer_identity(converted)["kind"] == "tokenizers"  # converted to fast on load
    converted.save_pretrained(tmp_path / "fast")
    (tmp_path / "fast" / "tokenizer.model").unlink(missing_ok=True)
    assert (tmp_path / "fast" / "tokenizer.json").is_file()
    assert tokenizer_digest(tmp_path / "fast") == tokenizer_digest(converted)


def test_slow_only_tokenizer_falls_back_to_vocabulary_and_encodings(tmp_path):
    from transformers import ByT5Tokenizer

    slow = ByT5Tokenizer()
    assert getattr(slow, "backend_tokenizer", None) is None
    identity = tokenizer_identity(slow)
    assert identity["kind"] == "vocab" and identity["vocab"] == slow.get_vocab()
    slow.save_pretrained(tmp_path / "byt5")
    assert tokenizer_digest(tmp_path / "byt5") == tokenizer_digest(slow)
    assert tokenizer_digest(ByT5Tokenizer(extra_ids=10)) != tokenizer_digest(slow)
    added = ByT5Tokenizer()
    added.add_tokens(["<new>"], special_tokens=True)
    assert tokenizer_digest(added) != tokenizer_digest(slow)


# -- through plan_recording: the request key and following a golden -----------
@pytest.fixture()
def model_dirs(tiny_model, original, tmp_path):
    """Model directories with the same weights: byte-identical tokenizer, re-saved one, changed one."""

    def with_tokenizer(name: str, tokenizer_dir: Path) -> Path:
        d = tmp_path / name
        shutil.copytree(tiny_model, d, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
        tokenizer_copy(tokenizer_dir, d)
        return d

    resaved = resave_with_byte_changes(original, tmp_path / "resaved-tokenizer")
    changed = tokenizer_copy(original, tmp_path / "changed-tokenizer")
    CHANGES["lowercasing normalizer"](changed)
    return {
        "original": with_tokenizer("model-original", original),
        "copy": with_tokenizer("model-copy", original),
        "resaved": with_tokenizer("model-resaved", resaved),
        "changed": with_tokenizer("model-changed", changed),
    }


def plan(model_dir: Path, **kw):
    return plan_recording(RecordConfig(model=str(model_dir), prompts=PROMPTS, max_tokens=2, **kw), check_out=False)


def test_request_key_is_equal_for_the_original_and_the_resaved_model_dir(model_dirs):
    a, b = plan(model_dirs["original"]), plan(model_dirs["resaved"])
    assert a.model.path != b.model.path
    assert a.request.prompts == b.request.prompts
    assert a.request.model.tokenizer_digest == b.request.model.tokenizer_digest
    assert a.request.key() == b.request.key()
    assert plan(model_dirs["changed"]).request.key() != a.request.key()


def synthetic_golden(p, out: Path, *, schema_version: int, tokenizer_digest: str | None = None) -> Path:
    """A golden store for a plan's request, with made-up rows (no engine): 2 generated rows per sequence."""
    request = replace(p.request, prompt_logprobs=False)
    if tokenizer_digest is not None:
        request = replace(request, model=replace(request.model, tokenizer_digest=tokenizer_digest))
    vocab = 4096
    row = np.full((1, vocab), -np.log(vocab), dtype=np.float32)
    n = len(request.prompts)
    with StoreWriter(out, vocab_size=vocab) as w:
        for i in range(n):
            w.append_rows(GENERATED, i, np.repeat(row, 2, axis=0))
        manifest = Manifest(
            request=request, device=Device(kind="cpu"), vocab_size=vocab,
            sequences=tuple(SequenceInfo(i, len(request.prompts[i]), 2, "length") for i in range(n)),
            arrays={}, created_at="2026-01-01T00:00:00+00:00", tool_version="0.0.0", schema_version=schema_version,
        )
        path, _ = w.commit(manifest, [list(request.prompts[i]) + [5, 6] for i in range(n)])
    return path


def test_following_a_version_2_golden_accepts_a_resaved_tokenizer(model_dirs, tmp_path):
    golden = synthetic_golden(plan(model_dirs["original"]), tmp_path / "goldens", schema_version=2)
    assert Store.open(golden).verify().schema_version == 2
    followed = plan(model_dirs["resaved"], golden=golden)
    assert followed.trajectories == [[5, 6], [5, 6]]
    with pytest.raises(GoldenMismatchError, match="tokenizer"):
        plan(model_dirs["changed"], golden=golden)


def test_following_a_version_1_golden_compares_tokenizer_files(model_dirs, tmp_path):
    p = plan(model_dirs["original"])
    v1_digest = legacy_tokenizer_digest(model_dirs["original"])
    golden = synthetic_golden(p, tmp_path / "goldens", schema_version=1, tokenizer_digest=v1_digest)
    manifest = Store.open(golden).verify()
    assert manifest.schema_version == 1
    # Byte-identical tokenizer files: followed, and the golden is found by the key it was filed under.
    assert plan(model_dirs["copy"], golden=golden).trajectories == [[5, 6], [5, 6]]
    assert legacy_request_key(p.request, model_dirs["copy"]) == manifest.request_key
    # A re-saved tokenizer cannot be told equivalent from a schema-1 digest: refused, saying why.
    assert legacy_request_key(p.request, model_dirs["resaved"]) != manifest.request_key
    with pytest.raises(GoldenMismatchError) as err:
        plan(model_dirs["resaved"], golden=golden)
    assert "schema_version 1" in err.value.one_line()
