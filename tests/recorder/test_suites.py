"""The shipped prompt suites: what they hold, how their long documents are fitted, and the CLI's --suite."""

from __future__ import annotations

import json
import logging
from importlib import resources

import pytest

from parity.errors import PromptError
from parity.recorder.devices import EngineOptions
from parity.recorder.inputs import resolve_prompts
from parity.recorder.plan import RecordConfig, plan_recording
from parity.recorder.presets import DEFAULT_PROMPTS
from parity.recorder.suites import FIT_MAX_MODEL_LEN, FORMAT, fit_ids, load_suite, suite_names
from parity.schemas import Store
from tests.support.cli_run import assert_one_line_error, parity

# The legacy tool's prompts, as it shipped them: the seed suite must stay exactly these.
LEGACY_PROMPTS = ("Hello, my name is", "The capital of France is", "Once upon a time", "In the beginning",
                  "The quick brown fox", "def add(a, b):", "Large language models predict", "Numbers: 1 2 3")
MAX_MODEL_LEN = 256
MAX_TOKENS = 4


def _plan(tiny_model, **kw):
    engine = EngineOptions(max_model_len=kw.pop("max_model_len", MAX_MODEL_LEN))
    cfg = RecordConfig(model=str(tiny_model), max_tokens=kw.pop("max_tokens", MAX_TOKENS), engine=engine,
                       check_device=False, **kw)
    return plan_recording(cfg, check_out=False)


def test_every_shipped_suite_loads_and_names_its_license():
    assert suite_names() == ["default", "long", "seed", "short"]
    root = resources.files("parity.recorder.suites")
    for name in suite_names():
        spec = json.loads(root.joinpath(f"{name}.json").read_text(encoding="utf-8"))
        assert spec["format"] == FORMAT and spec["name"] == name and spec["description"]
        assert "written for parity" in spec["notice"] and "Apache-2.0" in spec["notice"]
        suite = load_suite(name)
        assert suite.prompts and all(p.text.strip() for p in suite.prompts)
    total = sum(len(f.read_bytes()) for f in root.iterdir() if f.name.endswith((".json", ".txt")))
    assert total < 100_000


def test_default_mixes_short_prompts_and_long_documents():
    default = load_suite("default")
    short = [p for p in default.prompts if p.fit is None]
    long = [p for p in default.prompts if p.fit == FIT_MAX_MODEL_LEN]
    assert len(short) == 6 and len(long) == 2
    assert all(len(p.text) < 200 for p in short)
    assert all(len(p.text) > 35_000 for p in long)  # well over 8k tokens for a typical BPE tokenizer
    assert load_suite("short").prompts == tuple(short)
    assert load_suite("long").prompts == tuple(long)


def test_seed_is_the_legacy_prompts_and_default_prompts_stays_its_alias():
    assert tuple(load_suite("seed").texts) == LEGACY_PROMPTS == DEFAULT_PROMPTS
    assert all(p.fit is None for p in load_suite("seed").prompts)


def test_prompt_sources_and_cycling():
    assert resolve_prompts(None, None, None).suite == "default"
    cycled = resolve_prompts(None, None, 10, "default")
    assert cycled.suite == "default" and len(cycled.prompts) == 10
    assert cycled.prompts[8:] == cycled.prompts[:2]
    assert resolve_prompts(["x"], None, None).suite is None
    with pytest.raises(PromptError, match="known suites are default, long, seed, short"):
        resolve_prompts(None, None, None, "nope")
    with pytest.raises(PromptError, match="--suite and --prompts"):
        resolve_prompts(["x"], None, None, "seed")


def test_fitting_cuts_long_documents_to_the_context_and_leaves_short_prompts(tiny_model):
    plan = _plan(tiny_model)
    tok = plan.tokenizer
    suite = load_suite("default")
    assert plan.suite == "default" and len(plan.prompt_ids) == len(suite.prompts)
    for p, ids, text in zip(suite.prompts, plan.prompt_ids, plan.prompt_texts):
        whole = list(tok(p.text, verbose=False)["input_ids"])
        if p.fit is None:
            assert ids == whole and text == p.text
        else:
            assert len(whole) > MAX_MODEL_LEN
            assert ids == whole[:MAX_MODEL_LEN - MAX_TOKENS]  # the beginning, to exactly max_model_len - max_tokens
            assert text == tok.decode(ids, skip_special_tokens=True) and p.text.startswith(text[:200])
    assert plan.request.max_model_len == MAX_MODEL_LEN


def test_fitting_follows_max_tokens_and_cycled_documents(tiny_model):
    plan = _plan(tiny_model, suite="long", num_prompts=3, max_tokens=20)
    assert [len(p) for p in plan.prompt_ids] == [MAX_MODEL_LEN - 20] * 3
    assert plan.prompt_ids[0] == plan.prompt_ids[2] != plan.prompt_ids[1]


def test_a_document_shorter_than_its_budget_is_used_whole(caplog):
    with caplog.at_level(logging.DEBUG, logger="parity"):
        assert fit_ids([5, 6, 7], 10) == [5, 6, 7]
    assert "used whole" in caplog.text
    assert fit_ids(list(range(20)), 10) == list(range(10))


def test_fitting_needs_room_for_the_generated_tokens(tiny_model):
    with pytest.raises(PromptError, match="leaves no room"):
        _plan(tiny_model, suite="long", max_tokens=MAX_MODEL_LEN)
    assert _plan(tiny_model, suite="seed", max_tokens=MAX_MODEL_LEN).suite == "seed"  # nothing to fit


def test_given_prompts_have_no_suite_and_ids_refuse_one(tiny_model):
    assert _plan(tiny_model, prompts=["Hello"]).suite is None
    with pytest.raises(PromptError, match="prompt token ids or a prompt suite"):
        _plan(tiny_model, prompt_token_ids=[[1, 2, 3]], suite="seed")


def test_cli_refuses_an_unknown_suite_and_a_suite_with_prompts(tmp_path, tiny_model):
    model = ("--model", str(tiny_model), "--out", str(tmp_path))
    assert_one_line_error(parity("record", *model, "--suite", "nope"),
                          "unknown prompt suite 'nope'", "default, long, seed, short")
    assert_one_line_error(parity("record", *model, "--suite", "seed", "--prompts", "Hi"),
                          "--suite and --prompts")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n")
    assert_one_line_error(parity("record", *model, "--suite", "seed", "--prompts-file", str(prompts)),
                          "--suite and --prompts-file")
    assert list(tmp_path.iterdir()) == [prompts]


def test_dry_run_shows_the_default_suite_reaching_the_context(tmp_path, tiny_model):
    proc = parity("record", "--dry-run", "--model", str(tiny_model), "--max-model-len", str(MAX_MODEL_LEN),
                  "--max-tokens", str(MAX_TOKENS), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    prompts = plan["prompts"]
    fits = [p.fit for p in load_suite("default").prompts]
    assert prompts["suite"] == "default" and prompts["count"] == len(fits)
    assert [n for n, fit in zip(prompts["lengths"], fits) if fit] == [MAX_MODEL_LEN - MAX_TOKENS] * 2
    assert all(n < 200 for n, fit in zip(prompts["lengths"], fits) if not fit)
    assert plan["positions"]["prompt"] == sum(n - 1 for n in prompts["lengths"])
    seed = parity("record", "--dry-run", "--model", str(tiny_model), "--suite", "seed", "--out", str(tmp_path))
    assert seed.returncode == 0, seed.stderr
    assert json.loads(seed.stdout)["prompts"]["suite"] == "seed"


@pytest.mark.engine
def test_recording_the_default_suite_reaches_max_model_len(tiny_model, tmp_path):
    from parity.recorder import record

    result = record(RecordConfig(model=str(tiny_model), max_tokens=MAX_TOKENS, out=tmp_path,
                                 engine=EngineOptions(max_model_len=MAX_MODEL_LEN)))
    store = Store.open(result.path)
    m = store.manifest
    assert m.run["prompt_suite"] == "default"
    fits = [p.fit for p in load_suite("default").prompts]
    assert len(m.sequences) == len(fits)
    long = [s for s, fit in zip(m.sequences, fits) if fit]
    assert [s.prompt_len for s in long] == [MAX_MODEL_LEN - MAX_TOKENS] * 2
    for s in long:  # the whole context is used, unless the model stopped at its end-of-sequence token
        assert s.prompt_len + s.generated_len == MAX_MODEL_LEN or s.finish_reason == "stop", s
        assert len(store.tokens(s.index)) == s.prompt_len + s.generated_len
    assert any(s.prompt_len + s.generated_len == MAX_MODEL_LEN for s in long)
    assert m.prompt_positions == sum(s.prompt_len - 1 for s in m.sequences)
