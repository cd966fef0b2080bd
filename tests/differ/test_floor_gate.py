"""The per-position gate against a noise floor, and argmax flips classified.

Synthetic stores on the reference's forced trajectory: a baseline of accepted
numerics (noise), a faithful candidate (independent noise of the same size),
and bugged ones (more noise everywhere, or only at later positions).
"""

from __future__ import annotations

import numpy as np
import pytest

from parity import differ
from parity.differ import flips
from parity.differ.floor import FloorRule, per_position
from parity.differ.testing import DEFAULT_PROMPT, log_softmax
from parity.errors import UsageError

V = 512
ROWS = (40, 40)


def _noisy(rng, rows, noise, scale_by_position=None):
    out = []
    for r in rows:
        scale = np.full((len(r), 1), noise) if scale_by_position is None else scale_by_position(len(r))[:, None]
        out.append(log_softmax(r.astype(np.float64) + rng.standard_normal(r.shape) * scale).astype(np.float32))
    return out


@pytest.fixture
def family(make_store, rng):
    """Reference, floor and candidates, all forced on the reference's tokens."""
    gen = [log_softmax(rng.standard_normal((n, V)) * 3).astype(np.float32) for n in ROWS]
    tokens = [list(np.argmax(g, axis=1)) for g in gen]
    ref, ref_m = make_store(gen, tokens=tokens)
    forced = {"golden": ref_m.digest, "forced": True}

    def cand(noise, **kw):
        return make_store(_noisy(rng, gen, noise, **kw), tokens=tokens, run=forced, dtype="bfloat16")[0]

    late = lambda n: np.where(np.arange(n) >= n // 2, 0.16, 0.02)  # noqa: E731 - a bug that grows with position
    return {"ref": ref, "floor": cand(0.02), "faithful": cand(0.02), "everywhere": cand(0.08),
            "late": cand(0.02, scale_by_position=late), "gen": gen, "tokens": tokens, "forced": forced}


def test_faithful_candidate_passes_and_bugs_fail_naming_why(family):
    ok = differ.diff(family["ref"], family["faithful"], baseline=family["floor"])
    assert ok.verdict == "pass", ok.failures
    p = ok.floor["per_position"]["generated"]
    assert p["positions"] == sum(ROWS) and p["fraction_within"] == 1.0
    assert 0.8 < p["sigma_ratio_kl"] < 1.25  # independent noise of the same size

    bad = differ.diff(family["ref"], family["everywhere"], baseline=family["floor"])
    assert bad.verdict == "fail"
    assert any("within 4x the floor at" in f for f in bad.failures)
    assert any("sigma ratio of KL" in f for f in bad.failures)
    assert any("sigma ratio of |delta|" in f for f in bad.failures)

    late = differ.diff(family["ref"], family["late"], baseline=family["floor"])
    assert late.verdict == "fail"
    p = late.floor["per_position"]["generated"]
    assert 0.4 < p["fraction_within"] < 0.6  # the first half of each sequence is faithful
    # The worst-ratio positions are named, and all lie in the bugged half.
    start = len(DEFAULT_PROMPT)
    assert p["worst_ratio"] and all(w["position"] >= start + ROWS[0] // 2 for w in p["worst_ratio"])
    text = differ.render_text(late, color=False)
    assert "per position: within 4x the floor" in text and "worst ratio: seq" in text
    page = differ.render_html(late)
    worst = p["worst_ratio"][0]
    assert "Position by position against the floor" in page
    assert f'#select={worst["sequence"]},{worst["position"]}&amp;cand=1' in page


def test_rule_parameters_move_the_verdict(family):
    loose = FloorRule(ratio=100.0, max_sigma_ratio=100.0, max_sigma_ratio_abs=100.0)
    assert differ.diff(family["ref"], family["everywhere"], baseline=family["floor"], floor_rule=loose).verdict == "pass"
    tight = FloorRule(ratio=0.5, kl_eps=0.0, abs_eps=0.0)
    assert differ.diff(family["ref"], family["faithful"], baseline=family["floor"], floor_rule=tight).verdict == "fail"
    reported = differ.diff(family["ref"], family["everywhere"], baseline=family["floor"], floor_rule=False)
    assert reported.verdict == "report" and reported.floor["rule"] is None


@pytest.mark.parametrize("kwargs", [dict(ratio=-1.0), dict(min_fraction=1.5), dict(kl_eps=float("nan"))])
def test_bad_rule_is_a_usage_error(kwargs):
    with pytest.raises(UsageError):
        FloorRule(**kwargs)


def test_per_position_aligns_by_sequence_and_position():
    """Positions are matched by (sequence, position), not by order."""
    cand = {"kl": np.array([1.0, 2.0, 9.0]), "max_abs": np.zeros(3), "seq": np.array([0, 0, 1]),
            "pos": np.array([5, 6, 5])}
    base = {"kl": np.array([9.0, 1.0, 2.0]), "max_abs": np.zeros(3), "seq": np.array([1, 0, 0]),
            "pos": np.array([5, 5, 6])}
    p = per_position(cand, base, FloorRule(ratio=1.0, kl_eps=0.0, abs_eps=0.0))
    assert p["positions"] == 3 and p["fraction_within"] == 1.0
    shifted = dict(base, pos=base["pos"] + 100)
    assert per_position(cand, shifted, FloorRule()) is None


def test_rounding_step():
    assert flips.rounding_step(1.0, "bfloat16") == 2.0 ** -7
    assert flips.rounding_step(20.0, "bfloat16") == 2.0 ** (4 - 7)
    assert flips.rounding_step(20.0, "float32") == 2.0 ** (4 - 23)
    assert flips.rounding_step(0.75, "float16") == 2.0 ** (-1 - 10)


def test_flips_are_classified_by_gap_and_rank(make_store, rng):
    """Three flips built by hand: a near-tie, a real flip, a garbage token."""
    n = 12
    ref = rng.standard_normal((n, V)) * 0.5
    ref[:, 7] += 12.0  # token 7 on top everywhere, by a wide margin
    ref[2, 8] = ref[2, 7] - 1e-3  # position 2: token 8 a hair below
    ref[5, 9] = ref[5, 7] - 3.0  # position 5: token 9 far below, still second
    ref = log_softmax(ref).astype(np.float32)
    cand = ref.copy()
    cand[2, 8], cand[2, 7] = cand[2, 7], cand[2, 8]  # swap the near-tie
    cand[5, 9] = cand[5, 7] + 0.5  # promote the distant second
    low = int(np.argsort(ref[8])[0])  # position 8: the reference's least likely token
    cand[8, low] = cand[8, 7] + 1.0
    cand = log_softmax(cand.astype(np.float64)).astype(np.float32)
    tokens = [list(np.argmax(ref, axis=1))]
    r_path, r_m = make_store([ref], tokens=tokens)
    c_path, _ = make_store([cand], tokens=tokens, run={"golden": r_m.digest, "forced": True}, dtype="bfloat16")

    r = differ.diff(r_path, c_path)
    f = r.flips["generated"]
    assert (f["flips"], f["near-tie"], f["real"], f["garbage"]) == (3, 1, 1, 1)
    by_pos = {x["position"]: x for x in f["listed"]}
    pos0 = len(DEFAULT_PROMPT)  # generated positions count on from the prompt
    assert by_pos[pos0 + 2]["class"] == "near-tie" and by_pos[pos0 + 2]["rank_in_reference"] == 2
    assert by_pos[pos0 + 5]["class"] == "real" and by_pos[pos0 + 5]["gap"] == pytest.approx(3.0, abs=1e-3)
    assert by_pos[pos0 + 8]["class"] == "garbage" and by_pos[pos0 + 8]["rank_in_reference"] == V
    # A garbage token fails the verdict even with no thresholds at all.
    assert r.verdict == "fail" and any("outside the reference's top-100" in x for x in r.failures)
    assert r.to_dict()["flips"]["generated"]["garbage"] == 1
    assert "Argmax flips" in differ.render_text(r, color=False)
    page = differ.render_html(r)
    assert "Argmax flips" in page and "garbage" in page
