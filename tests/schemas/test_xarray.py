"""Stores open in xarray (and so in dask): every array names its dimensions."""

from __future__ import annotations

import numpy as np
import pytest

from parity.differ.testing import SeqData, StoreSpec, build_manifest, greedy_tokens, log_softmax, topn_of
from parity.schemas import GENERATED, PROMPT, Store, StoreWriter

xr = pytest.importorskip("xarray", reason="xarray is in the test extra: pip install -e '.[test]'")
pytest.importorskip("dask")

V = 96
LENGTHS = (9, 5, 14)


def _sequences(rng, topn=None):
    seqs = []
    for n in LENGTHS:
        rows = log_softmax(rng.normal(0, 3, (n, V))).astype(np.float32)
        prompt = log_softmax(rng.normal(0, 3, (3, V))).astype(np.float32)
        if topn:
            values, ids = topn_of(rows, topn)
            pvalues, pids = topn_of(prompt, topn)
            seqs.append((rows, prompt, SeqData([1, 2, 3, 4], greedy_tokens(rows), values, prompt_rows=pvalues,
                                               generated_ids=ids, prompt_ids=pids)))
        else:
            seqs.append((rows, prompt, SeqData([1, 2, 3, 4], greedy_tokens(rows), rows, prompt_rows=prompt)))
    return seqs


def _write(out, seqs, *, topn=None, aligned=False) -> Store:
    reserve = {GENERATED: list(LENGTHS), PROMPT: [3] * len(LENGTHS)} if aligned else None
    spec = StoreSpec(V, [s for _, _, s in seqs], topn=topn)
    with StoreWriter(out, vocab_size=V, topn=topn, reserve=reserve, lanes=len(LENGTHS) if aligned else 1) as w:
        # Interleaved arrival, as batched decoding delivers rows.
        for step in range(max(LENGTHS)):
            for i, (_, _, s) in enumerate(seqs):
                if step < len(s.tokens):
                    w.append_rows(GENERATED, i, s.generated[step:step + 1],
                                  None if s.generated_ids is None else s.generated_ids[step:step + 1])
        for i, (_, _, s) in enumerate(seqs):
            w.append_rows(PROMPT, i, s.prompt_rows, s.prompt_ids)
        path, _ = w.commit(build_manifest(spec), [list(s.prompt) + list(s.tokens) for _, _, s in seqs])
    return Store.open(path)


@pytest.mark.parametrize("aligned", [False, True], ids=["packed", "aligned"])
@pytest.mark.parametrize("topn", [None, 7], ids=["full", "top7"])
def test_open_zarr_gives_a_dataset_whose_rows_are_the_stores(tmp_path, aligned, topn):
    rng = np.random.default_rng(5)
    seqs = _sequences(rng, topn)
    store = _write(tmp_path, seqs, topn=topn, aligned=aligned)
    ds = xr.open_zarr(store.path, consolidated=False)
    column = "rank" if topn else "vocab"
    assert ds["logprobs"].dims == ("logprobs_row", column)
    assert ds["prompt_logprobs"].dims == ("prompt_logprobs_row", column)
    assert ds["token_ids"].dims == ("token",) and ds["token_offsets"].dims == ("sequence_boundary",)
    if topn:
        assert ds["logprobs_ids"].dims == ("logprobs_row", "rank")
    offsets = ds["token_offsets"].values
    assert np.array_equal(offsets, np.concatenate([[0], np.cumsum([4 + n for n in LENGTHS])]))
    for i, (_, _, s) in enumerate(seqs):
        # The store's row addressing, evaluated by dask: the same values as the store's own reader.
        rows = store.sequence_rows(GENERATED, i)
        start = int(store.row_offsets(GENERATED)[i])
        lazy = ds["logprobs"].isel(logprobs_row=slice(start, start + len(rows)))
        assert np.array_equal(lazy.compute().values, rows)
        assert np.array_equal(rows, s.generated)
        assert list(ds["token_ids"].values[offsets[i]:offsets[i + 1]]) == [1, 2, 3, 4, *s.tokens]
    # Naming the axes is metadata: the content digest is a function of the values only.
    assert store.verify().digest == store.manifest.digest
