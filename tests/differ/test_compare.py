"""compare(): several candidates against one reference in one streaming pass."""

from __future__ import annotations

import logging
import threading
from collections import Counter

import numpy as np
import pytest

from parity import differ
from parity.differ import stream as core
from parity.differ.plan import Pairs, blocks
from parity.differ.testing import log_softmax, topn_of
from parity.errors import IncompatibleStoresError, UsageError
from parity.schemas import GENERATED, PROMPT, Store

V = 512
ROWS = (45, 7, 30)
PROMPT_ROWS = 4


def noisy(rng, rows, noise):
    return [log_softmax(r.astype(np.float64) + rng.standard_normal(r.shape) * noise).astype(np.float32) for r in rows]


@pytest.fixture
def reference(make_store, rng):
    gen = [log_softmax(rng.standard_normal((n, V)) * 3).astype(np.float32) for n in ROWS]
    prompt = [log_softmax(rng.standard_normal((PROMPT_ROWS, V)) * 3).astype(np.float32) for _ in ROWS]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    path, m = make_store(gen, prompt_rows=prompt, tokens=tokens)
    return path, m, gen, prompt, tokens


def forced(make_store, rng, reference, noise, **spec):
    _, m, gen, prompt, tokens = reference
    path, _ = make_store(noisy(rng, gen, noise), prompt_rows=noisy(rng, prompt, noise), tokens=tokens,
                         run={"golden": m.digest}, **spec)
    return path


def assert_same_report(a: differ.Report, b: differ.Report) -> None:
    assert a.to_json() == b.to_json()
    for kind in (GENERATED, PROMPT):
        assert a.positions[kind].keys() == b.positions[kind].keys()
        for k, v in b.positions[kind].items():
            np.testing.assert_array_equal(a.positions[kind][k], v, err_msg=f"{kind} {k}")


def count_rows(store: Store) -> Counter:
    """Counts every (kind, row) the store's values are read at."""
    seen: Counter = Counter()
    original = store.rows
    lock = threading.Lock()  # the diff's workers read concurrently

    def rows(kind, start=0, stop=None, ids=False, out=None):
        got = original(kind, start, stop, ids=ids, out=out)
        if not ids:
            with lock:
                seen.update((kind, r) for r in range(start, start + len(got)))
        return got

    store.rows = rows
    return seen


def test_blocks_cut_where_any_candidate_jumps():
    ref = np.arange(10, dtype=np.int64)
    z = np.zeros(10, np.int64)
    a = Pairs(ref, ref + 100, z, z, z)
    b = Pairs(ref, np.r_[np.arange(5), np.arange(20, 25)], z, z, z)
    assert blocks(a, 100) == [(0, 10)]
    assert blocks(b, 100) == [(0, 5), (5, 10)]
    assert blocks([a, b], 100) == [(0, 5), (5, 10)]
    assert blocks([a, a], 4) == blocks(a, 4)
    with pytest.raises(ValueError):
        blocks([a, Pairs(ref + 1, ref, z, z, z)], 100)


def test_one_pass_reads_each_reference_row_once(make_store, rng, reference, monkeypatch):
    monkeypatch.setattr(core, "BLOCK_BYTES", 16 * 4 * V)  # 16-row blocks: many blocks, read-ahead in play
    ref_path = reference[0]
    cands = [forced(make_store, rng, reference, noise) for noise in (0.05, 0.2, 0.6)]
    separate = [differ.diff(ref_path, c) for c in cands]

    ref = Store.open(ref_path)
    seen = count_rows(ref)
    ticks = []
    reports = differ.compare(ref, cands, progress=lambda done, total: ticks.append((done, total)))
    assert len(reports) == 3
    for got, want in zip(reports, separate):
        assert_same_report(got, want)

    every = {(GENERATED, r) for r in range(sum(ROWS))} | {(PROMPT, r) for r in range(PROMPT_ROWS * len(ROWS))}
    assert set(seen) == every
    # Each row once in the pass; besides it each report reads its worst position's row.
    assert sum(seen.values()) == len(every) + len(reports)
    pairs = len(every) * len(cands)
    assert ticks[0] == (0, pairs) and ticks[-1] == (pairs, pairs)
    assert [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_worker_count_changes_nothing(make_store, rng, reference, monkeypatch):
    # 16-row blocks spread over four workers that finish out of order: every
    # block's metrics and detail entries must land at its own positions.
    monkeypatch.setattr(core, "BLOCK_BYTES", 16 * 4 * V)
    cands = [forced(make_store, rng, reference, noise) for noise in (0.05, 0.6)]
    top_rows = noisy(rng, reference[2], 0.1)
    tops = [topn_of(r, 20) for r in top_rows]
    topn, _ = make_store([v for v, _ in tops], ids=[i for _, i in tops], tokens=reference[4], topn=20,
                         run={"golden": reference[1].digest})
    runs = {}
    for workers in (1, 4):
        monkeypatch.setattr(core, "available_cores", lambda: workers)
        runs[workers] = differ.compare(reference[0], [*cands, topn], details=True)
    for one, many in zip(runs[1], runs[4]):
        assert set(core.DETAIL_FIELDS) <= set(one.positions[GENERATED])
        assert_same_report(many, one)


def test_single_candidate_compare_equals_diff(make_store, rng, reference):
    cand = forced(make_store, rng, reference, 0.3)
    (got,) = differ.compare(reference[0], [cand])
    assert_same_report(got, differ.diff(reference[0], cand))


def test_other_trajectories_get_their_own_pass(make_store, rng, reference, caplog, monkeypatch):
    monkeypatch.setattr(core, "BLOCK_BYTES", 16 * 4 * V)
    ref_path, m, gen, prompt, tokens = reference
    on_traj = forced(make_store, rng, reference, 0.1)
    # Free-running, diverging at generated index 9 of sequence 0 and 3 of sequence 2.
    free_tokens = [list(t) for t in tokens]
    for seq, at in ((0, 9), (2, 3)):
        free_tokens[seq][at:] = [(t + 1) % V for t in free_tokens[seq][at:]]
    free, _ = make_store(noisy(rng, gen, 0.1), prompt_rows=noisy(rng, prompt, 0.1), tokens=free_tokens)
    # Forced but shorter: sequence 1 stopped early.
    short_gen = noisy(rng, gen, 0.2)
    short_gen[1] = short_gen[1][:4]
    short_tokens = [list(t) for t in tokens]
    short_tokens[1] = short_tokens[1][:4]
    short, _ = make_store(short_gen, prompt_rows=noisy(rng, prompt, 0.2), tokens=short_tokens,
                          run={"golden": m.digest}, finish_reasons=["length", "stop", "length"])
    # Top-20 rows on the golden's trajectory: shares the pass with the full-vocabulary one.
    top_rows = noisy(rng, gen, 0.1)
    tops = [topn_of(r, 20) for r in top_rows]
    topn, _ = make_store([v for v, _ in tops], ids=[i for _, i in tops], tokens=tokens, topn=20,
                         run={"golden": m.digest}, vocab_size=V)
    cands = [on_traj, free, short, topn]
    separate = [differ.diff(ref_path, c) for c in cands]
    with caplog.at_level(logging.DEBUG, logger="parity"):
        reports = differ.compare(ref_path, cands)
    for got, want in zip(reports, separate):
        assert_same_report(got, want)
    assert reports[1].sequences[0]["first_divergence"] == 9 and not reports[1].forced
    assert reports[2].summary["positions"] == sum(ROWS) - ROWS[1] + 4
    assert reports[3].summary["approximate"]
    again = [r for r in caplog.records if "reading the reference again" in r.getMessage()]
    assert again and all(r.levelno == logging.DEBUG for r in again)


def test_compare_takes_a_list_and_names_the_bad_candidate(make_store, rng, reference):
    with pytest.raises(UsageError, match="list"):
        differ.compare(reference[0], reference[0])
    other, _ = make_store([log_softmax(rng.standard_normal((5, 600))).astype(np.float32)])
    good = forced(make_store, rng, reference, 0.1)
    with pytest.raises(IncompatibleStoresError, match="candidate 2"):
        differ.compare(reference[0], [good, other])
    assert differ.compare(reference[0], []) == []
