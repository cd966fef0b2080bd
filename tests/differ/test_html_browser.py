"""The HTML report: self-contained, exact detail data, and a page that runs.

The browser tests open the page in headless Chromium (Debian's package;
``.ci/run`` installs it) and fail on any script error, console message or
missing render marker; they skip, saying why, where Chromium is absent.
Screenshots land in the test's tmp directory (the path is printed).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from parity import differ
from parity.differ import stream as core
from parity.differ.html import DETAIL_CAP, LP_BITS
from parity.differ.testing import SeqData, StoreSpec, log_softmax, write_store
from parity.errors import UsageError
from parity.schemas import GENERATED, PROMPT

PROMPT_IDS = [3, 1, 4, 1, 5]
DRIFT_AT = 12  # generated index from which the drifting candidate drifts in sequence 0 ...


def drift_start(seq: int, length: int) -> int:
    """... and in the others: later and later, so the heatmap has a staircase to show."""
    return DRIFT_AT + (seq * 7) % max(length // 2, 1)
NAN_SEQ, NAN_AT = 1, (4, 5, 6)  # the NaN candidate's all-NaN rows
# Token texts that must not break the page: markup, quotes, a newline, non-ASCII.
NASTY = {7: "</script><b>x", 8: '"quoted"', 9: "line\nbreak", 10: "naïve ✓"}


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


needs_chromium = pytest.mark.skipif(chromium() is None, reason="no chromium on PATH: .ci/run installs Debian's "
                                    "chromium package (apt-get install chromium); the page is not opened here")


# -- synthetic stores ---------------------------------------------------------

def _stores(root: Path, *, seqs: int, length: int, vocab: int, prompt: bool = True, seed: int = 7,
            extra: bool = True) -> dict[str, Path]:
    """A reference and candidates on its trajectory: "drift" drifts from
    DRIFT_AT on, "clean" stays within float noise, "nan" has NaN rows."""
    rng = np.random.default_rng(seed)
    logits = [rng.standard_normal((length - (i % 3), vocab)) * 3 for i in range(seqs)]
    plogits = [rng.standard_normal((len(PROMPT_IDS) - 1, vocab)) * 3 for _ in range(seqs)] if prompt else None
    tokens = [list(np.argmax(g, axis=1)) for g in logits]

    def store(name: str, gen, pr, **spec) -> Path:
        data = [SeqData(prompt=list(PROMPT_IDS), tokens=tokens[i], generated=gen[i].astype(np.float32),
                        prompt_rows=None if pr is None else pr[i].astype(np.float32)) for i in range(seqs)]
        path, _ = write_store(root / name, StoreSpec(vocab_size=vocab, sequences=data, **spec))
        return path

    ref = store("ref", [log_softmax(g) for g in logits], None if plogits is None else [log_softmax(p) for p in plogits])
    from parity.schemas import Store

    golden = Store.open(ref).manifest.digest

    def noisy(scale_before: float, scale_after: float):
        out = []
        for i, g in enumerate(logits):
            scale = np.where(np.arange(len(g)) < drift_start(i, length), scale_before, scale_after)[:, None]
            out.append(log_softmax(g + rng.standard_normal(g.shape) * scale))
        pr = None if plogits is None else [log_softmax(p + rng.standard_normal(p.shape) * scale_before) for p in plogits]
        return out, pr

    paths = {"ref": ref}
    gen, pr = noisy(1e-3, 0.8)
    paths["drift"] = store("drift", gen, pr, device="rbln", versions={"vllm": "0.0-test", "rebel-compiler": "0.9.1"},
                           run={"golden": golden})
    if extra:
        gen, pr = noisy(1e-4, 1e-4)
        paths["clean"] = store("clean", gen, pr, device="rbln", versions={"vllm": "0.0-test", "rebel-compiler": "0.9.2"},
                               run={"golden": golden})
        gen, pr = noisy(1e-4, 1e-4)
        for j in NAN_AT:
            gen[NAN_SEQ][j] = np.nan
        gen[0][2, :3] = np.nan  # a partly NaN row
        paths["nan"] = store("nan", gen, pr, device="rbln", versions={"vllm": "0.0-test", "rebel-compiler": "0.9.3"},
                             run={"golden": golden})
    return paths


def _tokenizer(root: Path, vocab: int) -> Path:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel

    words = {f"w{i}": i for i in range(vocab)}
    for i, t in NASTY.items():
        words.pop(f"w{i}")
        words[t] = i
    tok = tokenizers.Tokenizer(WordLevel(words, unk_token="w0"))
    path = root / "tok" / "tokenizer.json"
    path.parent.mkdir(parents=True)
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    paths = _stores(root, seqs=6, length=50, vocab=64)
    decode = differ.decoder_for(None, _tokenizer(root, 64))
    reports = differ.compare(paths["ref"], [paths["drift"], paths["clean"], paths["nan"]], decode=decode,
                             details=True, thresholds=differ.Thresholds(max_kl=1e-3))
    return paths, reports, decode


# -- page data ----------------------------------------------------------------

def page_data(page: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(meta, arrays) as the page's script reads them."""
    meta = json.loads(re.search(r'<script type="application/json" id="parity-meta">(.*?)</script>', page, re.S).group(1))
    blob = re.search(r'<script type="application/octet-stream" id="parity-data">(.*?)</script>', page, re.S).group(1)
    raw = zlib.decompress(base64.b64decode(blob))
    assert len(raw) == meta["rawBytes"]
    types = {"f4": np.float32, "i4": np.int32, "u1": np.uint8}
    arrays = {}
    for a in meta["arrays"]:
        t = np.dtype(types[a["dtype"]])
        chunk = np.frombuffer(raw, np.uint8, a["n"] * t.itemsize, a["offset"])
        arrays[a["name"]] = chunk.reshape(t.itemsize, a["n"]).T.copy().view(t).ravel()
    return meta, arrays


def test_detail_data_is_the_stores_top5(small):
    paths, reports, _ = small
    from parity.schemas import Store

    page = differ.render_html(reports)
    meta, arrays = page_data(page)
    for c, name in enumerate(("drift", "clean", "nan")):
        ref, cand = Store.open(paths["ref"]), Store.open(paths[name])
        for kind in (GENERATED, PROMPT):
            pos = reports[c].positions[kind]
            x = ref.rows(kind, 0, ref.row_offsets(kind)[-1]).astype(np.float64)
            y = cand.rows(kind, 0, cand.row_offsets(kind)[-1]).astype(np.float64)
            d = meta["cands"][c]["details"][kind]
            assert "sel" not in d and d["n"] == len(pos["kl"]) == len(x)  # under the cap: every position
            ids = arrays[f"dids/{c}/{kind}"].reshape(-1, 10)
            lp = arrays[f"dlp/{c}/{kind}"].reshape(-1, 10)
            # a stable sort, NaN last: rows with NaN list their largest other entries
            want_r = np.argsort(-x, axis=1, kind="stable")[:, :5]
            want_c = np.argsort(-y, axis=1, kind="stable")[:, :5]
            np.testing.assert_array_equal(ids[:, :5], want_r)
            np.testing.assert_array_equal(ids[:, 5:], want_c)
            # logprobs to LP_BITS significant bits
            np.testing.assert_allclose(lp[:, :5], np.take_along_axis(x, want_r, 1), rtol=2.0**-LP_BITS)
            np.testing.assert_allclose(lp[:, 5:], np.take_along_axis(y, want_c, 1), rtol=2.0**-LP_BITS)
            if name == "nan" and kind == GENERATED:
                bad = np.isnan(y).any(axis=1)
                assert bad.sum() == len(NAN_AT) + 1
                assert np.isnan(lp[bad, 5:]).all(axis=1).sum() == len(NAN_AT)  # the all-NaN rows
            # the cells: exact KL and the reference's tokens where the candidate compared
            lay = meta["kinds"][kind]
            off, base = np.array(lay["off"]), np.array(lay["base"])
            cells = off[pos["seq"]] + pos["pos"] - base[pos["seq"]]
            np.testing.assert_array_equal(arrays[f"kl/{c}/{kind}"][cells], pos["kl"].astype(np.float32))
            np.testing.assert_array_equal(arrays[f"tok/{kind}"][cells], pos["token"])
            np.testing.assert_array_equal(arrays[f"top1/{c}/{kind}"][cells], pos["top1"])
    # texts: decoded once per id, markup kept out of the HTML parser's way
    assert meta["texts"]["7"] == NASTY[7] and meta["texts"]["12"] == "w12"
    assert "</script><b>x" not in page.split('id="parity-meta">', 1)[1].split("</script>", 1)[0]


def test_details_cap_keeps_the_largest_kl_and_the_drift_start(small):
    _, reports, _ = small
    r = reports[0]
    gen = r.positions[GENERATED]
    cap = 40
    meta, arrays = page_data(differ.render_html(r, detail_cap=cap))
    d = meta["cands"][0]["details"]
    assert sum(x["n"] for x in d.values()) == cap and all(x.get("sel") for x in d.values())
    sel = arrays[f"dsel/0/{GENERATED}"]
    assert np.all(np.diff(sel) > 0)
    firsts = [int(np.searchsorted(gen["seq"], s["index"])) + s["first_top1_mismatch"]
              for s in r.sequences if s["first_top1_mismatch"] is not None]
    assert firsts and set(firsts) <= set(sel.tolist())
    rest = np.setdiff1d(sel, firsts)
    dropped = np.setdiff1d(np.arange(len(gen["kl"])), sel)
    assert gen["kl"][rest].min() >= gen["kl"][dropped].max()
    ids = arrays[f"dids/0/{GENERATED}"].reshape(-1, 10)
    np.testing.assert_array_equal(ids[:, :5], gen["ref_top5_ids"][sel])
    page = differ.render_html(r, detail_cap=cap)
    assert f"at most {cap:,} positions per candidate" in page


def test_details_are_opt_in_and_change_nothing_else(small):
    paths, reports, decode = small
    plain = differ.diff(paths["ref"], paths["drift"], thresholds=differ.Thresholds(max_kl=1e-3))
    assert not set(core.DETAIL_FIELDS) & set(plain.positions[GENERATED]) and plain.token_texts == {}
    same = differ.diff(paths["ref"], paths["drift"], thresholds=differ.Thresholds(max_kl=1e-3), decode=decode)
    assert same.to_json() == reports[0].to_json()
    for k, v in plain.positions[GENERATED].items():
        np.testing.assert_array_equal(reports[0].positions[GENERATED][k], v)
    # one reference array for the group: the reference's top-5 are computed once
    assert reports[0].positions[GENERATED]["ref_top5_ids"] is reports[1].positions[GENERATED]["ref_top5_ids"]
    meta, _ = page_data(differ.render_html(plain))
    assert meta["hasDetails"] is False and meta["texts"] == {}
    # decode at render time fills texts for a report made without
    meta, _ = page_data(differ.render_html(plain, decode=decode))
    assert meta["texts"]["9"] == NASTY[9]


def test_details_are_the_same_on_both_kernels(small):
    paths, reports, _ = small
    for kernel in ("numpy", "fused"):
        r = differ.compare(paths["ref"], [paths["drift"], paths["nan"]], details=True, kernel=kernel)
        for got, want in zip(r, reports[::2]):
            for kind in (GENERATED, PROMPT):
                for key in core.DETAIL_FIELDS:
                    np.testing.assert_array_equal(got.positions[kind][key], want.positions[kind][key],
                                                  err_msg=f"{kernel} {kind} {key}")
    with pytest.raises(UsageError, match="2 flags for 3 candidates"):
        differ.compare(paths["ref"], [paths["drift"], paths["clean"], paths["nan"]], details=[True, False])
    # one flag per candidate: the second gets none
    a, b = differ.compare(paths["ref"], [paths["drift"], paths["clean"]], details=[True, False])
    assert "cand_top5_ids" in a.positions[GENERATED] and "cand_top5_ids" not in b.positions[GENERATED]


def test_topn_details(tmp_path, make_store, rng):
    from parity.differ.testing import topn_of

    V = 128
    ref_rows = [log_softmax(rng.standard_normal((9, V)) * 3).astype(np.float32)]
    cand_rows = [log_softmax(r.astype(np.float64) + rng.standard_normal(r.shape) * 0.3).astype(np.float32) for r in ref_rows]
    tokens = [list(np.argmax(ref_rows[0], axis=1))]
    ref, m = make_store(ref_rows, tokens=tokens)
    vals, ids = topn_of(cand_rows[0], 3)  # fewer than 5 listed: padded
    cand, _ = make_store([vals], ids=[ids], topn=3, tokens=tokens, run={"golden": m.digest}, vocab_size=V)
    r = differ.diff(ref, cand, details=True)
    g = r.positions[GENERATED]
    np.testing.assert_array_equal(g["cand_top5_ids"][:, :3], ids)
    assert (g["cand_top5_ids"][:, 3:] == -1).all() and np.isnan(g["cand_top5_lp"][:, 3:]).all()
    np.testing.assert_array_equal(g["ref_top5_ids"], np.argsort(-ref_rows[0], axis=1, kind="stable")[:, :5])


def test_page_is_self_contained(small):
    _, reports, _ = small
    for page in (differ.render_html(reports[0]), differ.render_html(reports)):
        assert page.startswith("<!DOCTYPE html>")
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
        assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", page, re.I)
        assert not re.search(r"\b(fetch|XMLHttpRequest|WebSocket|importScripts)\s*\(", page)
        # the only http(s) text: SVG's namespace, which is no fetch
        assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}


def test_page_keeps_the_summaries(small):
    paths, reports, _ = small
    one = differ.render_html(reports[0])
    for needle in ("verdict: ", "FAIL", "thresholds max_kl=0.001", "Worst positions", "KL by reference top-token",
                   "Generated positions", "Prompt positions", "KL histogram", "Worst position: sequence", "pearson",
                   "argmax first differs in", "<svg"):
        assert needle in one, needle
    assert "Trend across candidates" not in one
    three = differ.render_html(reports)
    assert "Trend across candidates" in three
    from parity.differ import multi

    for label in multi.labels(reports):
        assert label in three
    assert three.count('<section class="cand-only') == 3
    # worst positions link to the detail panel
    w = reports[0].worst[0]
    assert f'href="#select={w["sequence"]},{w["position"]}&amp;cand=1' in three


def test_render_html_input_errors(small, make_store, rng):
    _, reports, _ = small
    with pytest.raises(UsageError):
        differ.render_html([])
    other, _ = make_store([log_softmax(rng.standard_normal((4, 64))).astype(np.float32)])
    r = differ.diff(other, other)
    with pytest.raises(UsageError, match="different references"):
        differ.render_html([reports[0], r])


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """500 sequences x ~1000 generated positions, the drifting candidate, with details."""
    root = tmp_path_factory.mktemp("html-big")
    paths = _stores(root, seqs=500, length=1000, vocab=16, prompt=False, extra=False)
    with pytest.MonkeyPatch.context() as mp:
        # Rows of 16 logits: the row cap that bounds blocks of wide rows would
        # only multiply the reads here (7 s instead of 30).
        mp.setattr(core, "MAX_BLOCK_ROWS", 4096)
        return differ.diff(paths["ref"], paths["drift"], details=True)


def test_round_bits():
    from parity.differ.html import _round_bits

    x = np.array([-1.2345678, -1e-7, -30.123456, 0.0, np.nan, -np.inf, np.inf], np.float32)
    r = _round_bits(x)
    np.testing.assert_allclose(r[:4], x[:4], rtol=2.0**-LP_BITS)
    assert np.isnan(r[4]) and r[5] == -np.inf and r[6] == np.inf
    assert (r[:4].view(np.uint32) & ((1 << (24 - LP_BITS)) - 1) == 0).all()


def test_big_page_size(big, tmp_path):
    """500 sequences x 1000 positions: the page size stays reasonable."""
    t0 = time.perf_counter()
    page = differ.render_html(big)
    t1 = time.perf_counter()
    meta, _ = page_data(page)
    print(f"\n500x1000: {big.summary['positions']} positions, render_html {t1 - t0:.2f}s, "
          f"page {len(page) / 1e6:.2f} MB ({meta['rawBytes'] / 1e6:.1f} MB of arrays before compression)")
    assert big.summary["positions"] > DETAIL_CAP
    assert meta["cands"][0]["details"][GENERATED]["n"] == DETAIL_CAP
    assert len(page) < 8e6


# -- in the browser -------------------------------------------------------------

def open_page(path: Path, tmp: Path, fragment: str = "", screenshot: Path | None = None) -> tuple[dict, str]:
    """Loads the page in headless Chromium: (body data attributes, console lines)."""
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=20000", "--window-size=1280,1600"]
    cmd += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    cmd.append(path.resolve().as_uri() + fragment)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    console = [ln for ln in out.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    if screenshot:
        assert out.returncode == 0 and screenshot.exists(), out.stderr[-2000:]
        return {}, "\n".join(console)
    assert out.returncode == 0, out.stderr[-2000:]
    tag = re.search(r"<body([^>]*)>", out.stdout)
    assert tag, out.stdout[:500]
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag.group(1)))
    return attrs, "\n".join(console)


def check_page(path: Path, tmp: Path, fragment: str = "") -> dict:
    attrs, console = open_page(path, tmp, fragment)
    assert "error" not in attrs, attrs["error"]
    assert not console, console
    assert attrs.get("rendered") == "ok", attrs
    return attrs


@needs_chromium
@pytest.mark.parametrize("n", [1, 3])
def test_page_runs_in_chromium(small, tmp_path, n):
    _, reports, _ = small
    r = reports[0] if n == 1 else reports
    path = tmp_path / f"report{n}.html"
    t0 = time.perf_counter()
    path.write_text(differ.render_html(r))
    t1 = time.perf_counter()
    attrs = check_page(path, tmp_path)
    print(f"\n{n} candidate(s), 6 sequences x ~50: page {path.stat().st_size / 1e3:.0f} kB, render_html "
          f"{t1 - t0:.3f}s, in the browser {attrs.get('render-ms')} ms")
    # a click, through the URL: the panel gets the position's top-5; then
    # the real hover, click and arrow-key handlers on that cell
    rep = reports[0]
    w = rep.worst[0]
    attrs = check_page(path, tmp_path, f"#select={w['sequence']},{w['position']}&cand=1&probe")
    assert attrs.get("selected") == f"ok:{w['sequence']},{w['position']},detail", attrs
    assert attrs.get("probe") == "ok", attrs
    if n == 3:  # the NaN candidate's NaN row, and a prompt position
        nan_pos = len(PROMPT_IDS) + NAN_AT[0]
        # rows sorted by largest KL: the NaN row goes first; hits map back through the order
        attrs = check_page(path, tmp_path, f"#select={NAN_SEQ},{nan_pos}&cand=3&rows=klmax&probe")
        assert attrs.get("selected") == f"ok:{NAN_SEQ},{nan_pos},detail", attrs
        assert attrs.get("probe") == "ok", attrs
        attrs = check_page(path, tmp_path, "#select=2,3&cand=2&kind=prompt&probe")
        assert attrs.get("selected") == "ok:2,3,detail", attrs
        assert attrs.get("probe") == "ok", attrs
    # a position that was not compared is reported, not silently ignored
    attrs = check_page(path, tmp_path, "#select=0,4000")
    assert attrs.get("selected", "").startswith("error: position 4000"), attrs
    shot = tmp_path / f"report{n}.png"
    _, console = open_page(path, tmp_path, f"#select={w['sequence']},{w['position']}&tip", screenshot=shot)
    assert not console, console
    print(f"screenshot: {shot}")


@needs_chromium
def test_page_without_details_runs(small, tmp_path):
    paths, _, _ = small
    r = differ.diff(paths["ref"], paths["drift"])
    path = tmp_path / "plain.html"
    path.write_text(differ.render_html(r))
    attrs = check_page(path, tmp_path, f"#select=0,{len(PROMPT_IDS) + 3}&probe")
    assert attrs.get("selected") == f"ok:0,{len(PROMPT_IDS) + 3},nodetail", attrs
    assert attrs.get("probe") == "ok", attrs


@needs_chromium
def test_big_page_runs_in_chromium(big, tmp_path):
    r = big
    path = tmp_path / "big.html"
    path.write_text(differ.render_html(r))
    attrs = check_page(path, tmp_path)
    print(f"\n500x1000: page {path.stat().st_size / 1e6:.2f} MB, in the browser {attrs.get('render-ms')} ms")
    # the cap: a low-KL position before the drift has no top-5, the drift start has
    s = r.sequences[3]
    attrs = check_page(path, tmp_path, f"#select=3,{s['prompt_len'] + s['first_top1_mismatch']}&probe")
    assert attrs.get("selected", "").endswith(",detail") and attrs.get("probe") == "ok", attrs
    attrs = check_page(path, tmp_path, f"#select=3,{s['prompt_len'] + 2}")  # before the drift: low KL
    assert attrs.get("selected") == f"ok:3,{s['prompt_len'] + 2},nodetail", attrs
    shot = tmp_path / "big.png"
    _, console = open_page(path, tmp_path, f"#select=250,{s['prompt_len'] + 500}&rows=drift&tip", screenshot=shot)
    assert not console, console
    print(f"screenshot: {shot}")


@needs_chromium
def test_free_running_page_runs(tmp_path, make_store, rng):
    """Tokens diverge: rows stop there, and the divergence is marked and selectable."""
    V = 64
    gen = [log_softmax(rng.standard_normal((n, V)) * 3).astype(np.float32) for n in (20, 9, 15)]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    ref, _ = make_store(gen, tokens=tokens)
    free_tokens = [list(t) for t in tokens]
    for seq, at in ((0, 7), (2, 3)):
        free_tokens[seq][at:] = [(t + 1) % V for t in free_tokens[seq][at:]]
    cand, _ = make_store([log_softmax(g + rng.standard_normal(g.shape) * 0.05).astype(np.float32) for g in gen],
                         tokens=free_tokens)
    r = differ.diff(ref, cand, details=True)
    assert not r.forced and r.sequences[0]["first_divergence"] == 7
    path = tmp_path / "free.html"
    path.write_text(differ.render_html(r))
    at = len(PROMPT_IDS) + 7
    attrs = check_page(path, tmp_path, f"#select=0,{at}&probe")
    assert attrs.get("selected") == f"ok:0,{at},detail" and attrs.get("probe") == "ok", attrs
    # past the divergence nothing was compared
    attrs = check_page(path, tmp_path, f"#select=0,{at + 1}")
    assert attrs.get("selected", "").startswith("error: position"), attrs


@needs_chromium
def test_page_of_a_report_without_positions(tmp_path, make_store, rng):
    V = 32
    empty = np.zeros((0, V), np.float32)
    ref, m = make_store([empty, empty], tokens=[[], []])
    cand, _ = make_store([empty, empty], tokens=[[], []], run={"golden": m.digest})
    r = differ.diff(ref, cand, details=True)
    assert r.summary["positions"] == 0
    path = tmp_path / "empty.html"
    path.write_text(differ.render_html(r))
    check_page(path, tmp_path)
