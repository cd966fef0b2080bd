"""Alignment: forced vs free-running trajectories, first divergence, vLLM's rule."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from parity import differ
from parity.differ.testing import DEFAULT_PROMPT as PROMPT
from parity.differ.testing import pair_rows


def kl_rows(lr, lc):
    return special.rel_entr(np.exp(lr.astype(np.float64)), np.exp(lc.astype(np.float64))).sum(axis=1)


def test_free_running_stops_at_first_divergence(make_store, rng):
    ref, cand = pair_rows(rng, 30, noise=0.05)
    ref_tokens = list(np.argmax(ref, axis=1))
    cand_tokens = list(ref_tokens)
    div = 11
    # the candidate emits the reference's 2nd choice at `div` (within top-5 both ways)
    second_r = int(np.argsort(-ref[div])[1])
    cand = cand.copy()
    cand[div, second_r] = cand[div].max() + 0.5
    cand_tokens[div] = second_r
    cand_tokens[div + 1 :] = [(t + 1) % 512 for t in ref_tokens[div + 1 :]]
    ref_path, _ = make_store([ref, ref], tokens=[ref_tokens, ref_tokens])
    cand_path, _ = make_store([cand, ref], tokens=[cand_tokens, ref_tokens])
    report = differ.diff(ref_path, cand_path, thresholds=differ.Thresholds(max_kl=100.0))
    assert not report.forced
    s0, s1 = report.sequences
    assert s0["first_divergence"] == div
    assert s0["first_divergence_position"] == len(PROMPT) + div
    assert s0["positions"] == div + 1  # up to and including the divergent token
    assert s1["first_divergence"] is None and s1["positions"] == 30
    pos = report.positions["generated"]
    np.testing.assert_allclose(pos["kl"][: div + 1], kl_rows(ref[: div + 1], cand[: div + 1]), rtol=1e-5, atol=1e-10)
    np.testing.assert_array_equal(pos["pos"][: div + 1], np.arange(div + 1) + len(PROMPT))
    d = s0["divergence"]
    assert d["ref_token"] == ref_tokens[div] and d["cand_token"] == second_r
    assert d["cand_token_rank_in_ref"] == 2
    assert d["ref_token_rank_in_cand"] == 2
    assert d["passes"]
    assert report.summary["token_match_rate"] == pytest.approx((div + 30) / 60)
    assert report.verdict == "pass"


def test_vllm_rule_fails_when_token_outside_top_n(make_store, rng):
    ref, cand = pair_rows(rng, 10, noise=0.05)
    ref_tokens = list(np.argmax(ref, axis=1))
    worst = int(np.argmin(ref[4]))  # rank 512 in the reference
    cand = cand.copy()
    cand[4, worst] = cand[4].max() + 1.0
    cand_tokens = list(ref_tokens)
    cand_tokens[4] = worst
    ref_path, _ = make_store([ref], tokens=[ref_tokens])
    cand_path, _ = make_store([cand], tokens=[cand_tokens])
    report = differ.diff(ref_path, cand_path, top_n_rule=5)
    d = report.sequences[0]["divergence"]
    assert d["cand_token_rank_in_ref"] == 512
    assert not d["passes"]
    assert report.verdict == "report"  # no thresholds: report only
    gated = differ.diff(ref_path, cand_path, thresholds=differ.Thresholds(max_kl=1e9))
    assert gated.verdict == "fail" and gated.exit_code == 1
    assert any("top-5" in f for f in gated.failures)


def test_forced_candidate_compares_every_position(make_store, rng):
    ref, cand = pair_rows(rng, 25, noise=0.5)
    ref_path, ref_m = make_store([ref])
    cand_path, _ = make_store([cand], tokens=[list(np.argmax(ref, axis=1))], run={"golden": ref_m.digest})
    report = differ.diff(ref_path, cand_path)
    assert report.forced
    assert report.summary["positions"] == 25
    top1 = np.argmax(ref, axis=1) == np.argmax(cand, axis=1)
    assert not top1.all()
    assert report.sequences[0]["first_top1_mismatch"] == int(np.argmin(top1))


def test_length_mismatch_compares_common_prefix(make_store, rng):
    ref, cand = pair_rows(rng, 20, noise=0.05)
    ref_path, ref_m = make_store([ref], finish_reasons=["length"])
    short = cand[:14]
    cand_path, _ = make_store([short], tokens=[list(np.argmax(ref[:14], axis=1))], finish_reasons=["stop"],
                              run={"forced": True})
    report = differ.diff(ref_path, cand_path)
    assert report.summary["positions"] == 14
    assert any("sequence 0" in w and "20" in w and "14" in w for w in report.warnings)
    np.testing.assert_allclose(report.positions["generated"]["kl"], kl_rows(ref[:14], short), rtol=1e-5, atol=1e-10)
