"""Stage 2 of a diff: the streamed per-position metrics of one candidate
become its ``Summaries`` (totals, sequences, first divergences, worst
positions), and with a verdict judged once its ``Report``."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from parity.schemas import GENERATED, PROMPT, Store

from . import metrics
from .flips import TIE_STEPS, classify
from .plan import KINDS, Plan
from .report import Report
from .summary import Summaries, kl_by_confidence, kl_by_position, sequence_summary, summarize
from .thresholds import Thresholds
from .verdict import Gate, judge

log = logging.getLogger("parity")

SNIPPET = 3  # head and tail entries shown for the worst position
Decode = Callable[[int], str]


def summarise(ref: Store, cand: Store, plan: Plan, warnings: list[str], positions: dict[str, dict[str, np.ndarray]],
              *, eps: float, top_n_rule: int, worst: int, decode: Decode | None,
              tie_steps: float = TIE_STEPS) -> Summaries:
    """One candidate's summaries from its streamed ``positions`` (which gain
    the pairs' ``seq``, ``pos`` and ``token``)."""
    gen, pr = positions[GENERATED], positions[PROMPT]
    for kind in KINDS:
        for k in ("seq", "pos", "token"):
            positions[kind][k] = getattr(plan.pairs[kind], k)

    common = sum(sp.common for sp in plan.sequences)
    matched = sum(sp.common if sp.first_divergence is None else sp.first_divergence for sp in plan.sequences)
    generated = summarize(gen, matched / common if common else None)
    prompt = summarize(pr) if len(plan.pairs[PROMPT]) else None
    sequences = _sequences(ref, cand, plan, positions, prompt is not None, top_n_rule, decode)
    worst_list, detail = _worst(ref, cand, plan, positions, worst, decode, eps)
    return Summaries(
        reference=_store_info(ref),
        candidate=_store_info(cand),
        forced=plan.forced,
        generated=generated,
        prompt=prompt,
        sequences=tuple(sequences),
        warnings=tuple(warnings),
        worst=tuple(worst_list),
        worst_detail=detail,
        kl_by_confidence=tuple(kl_by_confidence(gen)),
        kl_by_position={GENERATED: kl_by_position(gen), PROMPT: kl_by_position(pr) if prompt is not None else None},
        eps=eps,
        top_n_rule=top_n_rule,
        flips={kind: classify(positions[kind], cand.manifest.request.dtype, tie_steps)
               for kind in KINDS if len(positions[kind]["kl"])},
        positions=positions,
    )


def report(s: Summaries, thresholds: Thresholds, floor: Gate | None = None,
           token_texts: dict[int, str] | None = None) -> Report:
    """The Report of ``s``, judged by ``thresholds`` and the noise floor's gate (``floor.Floor``)."""
    v = judge(s, thresholds, floor)
    return Report(
        reference=s.reference,
        candidate=s.candidate,
        forced=s.forced,
        summary=s.generated,
        prompt=s.prompt,
        sequences=list(s.sequences),
        worst=list(s.worst),
        thresholds=thresholds,
        warnings=[*s.warnings, *(floor.warnings if floor is not None else ())],
        kl_by_confidence=list(s.kl_by_confidence),
        kl_by_position=dict(s.kl_by_position),
        worst_detail=s.worst_detail,
        eps=s.eps,
        top_n_rule=s.top_n_rule,
        floor=floor.section if floor is not None else None,
        flips=s.flips,
        verdict=v.verdict,
        failures=list(v.failures),
        positions=s.positions,
        token_texts=dict(token_texts or {}),
    )


def _sequences(ref: Store, cand: Store, plan: Plan, positions: dict, prompt: bool, top_n_rule: int,
               decode: Decode | None) -> list[dict]:
    gen, pr = positions[GENERATED], positions[PROMPT]
    divergence = _divergence(ref, cand, plan, top_n_rule, decode)
    sequences = []
    for sp in plan.sequences:
        s = sequence_summary(gen, plan.pairs[GENERATED].seq, sp.index)
        first_top1 = s.pop("_first_top1_mismatch")
        p = sequence_summary(pr, plan.pairs[PROMPT].seq, sp.index) if prompt else None
        if p:
            p.pop("_first_top1_mismatch")
        sequences.append({
            "index": sp.index,
            "positions": s["positions"],
            "first_divergence": sp.first_divergence,
            "kl_mean": s["kl_mean"],
            "kl_max": s["kl_max"],
            "top1_agreement": s["top1_agreement"],
            "nan_positions": s["nan_positions"],
            "prompt_len": sp.prompt_len,
            "generated": {"reference": sp.ref_len, "candidate": sp.cand_len, "common": sp.common},
            "first_divergence_position": None if sp.first_divergence is None else sp.prompt_len + sp.first_divergence,
            "first_top1_mismatch": first_top1,
            "divergence": divergence.get(sp.index),
            "prompt": p,
        })
    return sequences


def _text(decode: Decode | None, token: int | None) -> str | None:
    if decode is None or token is None or token < 0:
        return None
    try:
        return decode(int(token))
    except Exception as e:  # a user's decoder must not sink the report
        log.warning("decode(%d) failed: %s", token, e)
        return None


def _read_row(store: Store, kind: str, row: int) -> tuple[np.ndarray, np.ndarray | None]:
    values = store.rows(kind, row, row + 1)[0]
    ids = None if store.full_vocab else store.rows(kind, row, row + 1, ids=True)[0]
    return values, ids


def _divergence(ref: Store, cand: Store, plan: Plan, top_n: int, decode: Decode | None) -> dict[int, dict]:
    """vLLM's rule at each sequence's first divergent token: each side's token
    must be within the other's top-N."""
    out: dict[int, dict] = {}
    r_off, c_off = ref.row_offsets(GENERATED), cand.row_offsets(GENERATED)
    for sp in plan.sequences:
        if sp.first_divergence is None:
            continue
        j = sp.first_divergence
        rv, ri = _read_row(ref, GENERATED, int(r_off[sp.index] + j))
        cv, ci = _read_row(cand, GENERATED, int(c_off[sp.index] + j))
        r_in_c = metrics.rank_in_row(cv, ci, sp.ref_token)
        c_in_r = metrics.rank_in_row(rv, ri, sp.cand_token)
        listed = min(n for n in (len(rv), len(cv)))
        ok = bool(r_in_c <= top_n and c_in_r <= top_n)  # NaN (not listed) fails
        out[sp.index] = {
            "generated_index": j,
            "position": sp.prompt_len + j,
            "ref_token": sp.ref_token,
            "cand_token": sp.cand_token,
            "ref_text": _text(decode, sp.ref_token),
            "cand_text": _text(decode, sp.cand_token),
            "ref_token_rank_in_cand": r_in_c,
            "cand_token_rank_in_ref": c_in_r,
            "top_n": top_n if listed >= top_n else listed,
            "passes": ok,
        }
    return out


def _worst_detail(ref: Store, cand: Store, kind: str, ref_row: int, cand_row: int) -> dict:
    rv, ri = _read_row(ref, kind, ref_row)
    cv, ci = _read_row(cand, kind, cand_row)

    def top(values, ids):
        lid, lv = metrics.Side(values[None, :], None if ids is None else ids[None, :]).listed(5)
        return [[int(i), float(v)] for i, v in zip(lid[0][:5], lv[0][:5])]

    def snippet(values, ids):
        if ids is not None:  # top-N: show listed values in id order
            values = values[np.argsort(ids)]
        return {"head": [float(v) for v in values[:SNIPPET]], "tail": [float(v) for v in values[-SNIPPET:]]}

    return {
        "kind": kind,
        "width": {"reference": int(len(rv)), "candidate": int(len(cv))},
        "top5": {"reference": top(rv, ri), "candidate": top(cv, ci)},
        "snippet": {"reference": snippet(rv, ri), "candidate": snippet(cv, ci)},
    }


def _store_info(store: Store) -> dict:
    m = store.manifest
    return {
        "path": str(store.path),
        "digest": m.digest,
        "model": m.request.model.id,
        "weights_digest": m.request.model.weights_digest,
        "tokenizer_digest": m.request.model.tokenizer_digest,
        "device": m.device.kind,
        "dtype": m.request.dtype,
        "logprobs": m.request.logprobs,
        "vocab_size": m.vocab_size,
        "versions": dict(m.device.versions),
        "created_at": m.created_at,
        "sequences": len(m.sequences),
        "positions": {"generated": m.generated_positions, "prompt": m.prompt_positions},
    }


def _worst(ref: Store, cand: Store, plan: Plan, positions: dict, n: int, decode: Decode | None, eps: float):
    """The n positions with the largest KL (NaN first, then inf), both kinds."""
    def rank_key(kl: float) -> tuple[bool, float]:
        return (not np.isnan(kl), 0.0 if np.isnan(kl) else -kl)

    rows = []
    for kind in KINDS:
        kl = positions[kind]["kl"]
        order = np.lexsort((-np.nan_to_num(kl, nan=0.0), ~np.isnan(kl)))[:n]
        rows += [(rank_key(float(kl[i])), kind, int(i)) for i in order]
    rows = [(kind, i) for _, kind, i in sorted(rows, key=lambda r: r[0])[:n]]
    out = []
    for kind, i in rows:
        p = positions[kind]
        out.append({
            "kind": kind,
            "sequence": int(p["seq"][i]),
            "position": int(p["pos"][i]),
            "kl": float(p["kl"][i]),
            "token": int(p["token"][i]),
            "token_text": _text(decode, int(p["token"][i])),
            "ref_top": int(p["ref_top"][i]),
            "cand_top": int(p["cand_top"][i]),
            "ref_top_text": _text(decode, int(p["ref_top"][i])),
            "cand_top_text": _text(decode, int(p["cand_top"][i])),
            "ref_conf": float(p["ref_conf"][i]),
            "delta_p": float(p["delta_p"][i]),
            "max_abs": float(p["max_abs"][i]),
            "top1": bool(p["top1"][i]),
        })
    detail = None
    if rows:
        kind, i = rows[0]
        pairs = plan.pairs[kind]
        p = positions[kind]
        detail = _worst_detail(ref, cand, kind, int(pairs.ref[i]), int(pairs.cand[i]))
        detail.update({
            "sequence": int(p["seq"][i]),
            "position": int(p["pos"][i]),
            "kl": float(p["kl"][i]),
            "finite": int(p["finite"][i]),
            "outliers": int(p["outliers"][i]),
            "max_abs": float(p["max_abs"][i]),
            "mean_abs": float(p["mean_abs"][i]),
            "pearson": float(p["pearson"][i]),
            "eps": eps,
            "vocab_size": ref.vocab_size,
        })
    return out, detail


class TokenTexts:
    """Decoded texts of the ids the details use, each id decoded once over all reports."""

    def __init__(self, decode: Decode | None):
        self.decode = decode
        self.cache: dict[int, str | None] = {}
        self.failed = 0

    def of(self, positions: dict[str, dict[str, np.ndarray]]) -> dict[int, str]:
        parts = []
        for pos in positions.values():
            parts.append(pos["token"].ravel())
            parts += [pos[k].ravel() for k in ("ref_top5_ids", "cand_top5_ids") if k in pos]
        ids = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        out = {}
        for t in ids[ids >= 0].tolist():
            if t not in self.cache:
                self.cache[t] = self._one(t)
            if self.cache[t] is not None:
                out[t] = self.cache[t]
        return out

    def _one(self, token: int) -> str | None:
        try:
            return str(self.decode(token))
        except Exception as e:  # a user's decoder must not sink the report; one warning, not one per id
            self.failed += 1
            if self.failed == 1:
                log.warning("decode(%d) failed: %s (the HTML report shows ids where decoding fails)", token, e)
            return None
