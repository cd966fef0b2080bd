"""Compatibility checks and the alignment of reference rows to candidate rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from parity.errors import IncompatibleStoresError
from parity.schemas import GENERATED, PROMPT, Store

KINDS = (GENERATED, PROMPT)


def check_compatible(ref: Store, cand: Store) -> list[str]:
    """Raises on what makes a comparison meaningless; returns warnings for the rest."""
    rm, cm = ref.manifest, cand.manifest
    if rm.vocab_size != cm.vocab_size:
        raise IncompatibleStoresError(
            f"vocab sizes differ: reference {rm.vocab_size}, candidate {cm.vocab_size}"
        )
    rt, ct = rm.request.model.tokenizer_digest, cm.request.model.tokenizer_digest
    warnings: list[str] = []
    if rt and ct and rt != ct and min(rm.schema_version, cm.schema_version) < 2 <= max(rm.schema_version, cm.schema_version):
        # Schema 1 digested tokenizer file bytes, schema 2 what decides ids: the
        # two cannot be compared; the prompts' token ids below still must match.
        warnings.append("tokenizer digests of schema 1 and 2 are not comparable: only prompt token ids are checked")
    elif rt and ct and rt != ct:
        raise IncompatibleStoresError(f"tokenizers differ: reference {rt}, candidate {ct}")
    if not (rt and ct):
        warnings.append("tokenizer digest missing on one side: cannot confirm the tokenizers match")
    rp, cp = rm.request.prompts, cm.request.prompts
    if len(rp) != len(cp):
        raise IncompatibleStoresError(f"prompt counts differ: reference has {len(rp)} sequences, candidate {len(cp)}")
    for i, (a, b) in enumerate(zip(rp, cp)):
        if a != b:
            at = next((j for j, (u, w) in enumerate(zip(a, b)) if u != w), min(len(a), len(b)))
            raise IncompatibleStoresError(
                f"prompt token ids differ in sequence {i} at token {at} "
                f"(reference {len(a)} tokens, candidate {len(b)})"
            )

    def differ(label: str, a, b) -> None:
        if a != b:
            warnings.append(f"{label} differs: reference {a!r}, candidate {b!r}")

    differ("model id", rm.request.model.id, cm.request.model.id)
    differ("model weights digest", rm.request.model.weights_digest, cm.request.model.weights_digest)
    differ("model revision", rm.request.model.revision, cm.request.model.revision)
    differ("num_hidden_layers", rm.request.num_hidden_layers, cm.request.num_hidden_layers)
    differ("device", rm.device.kind, cm.device.kind)
    differ("dtype", rm.request.dtype, cm.request.dtype)
    differ("sampling", rm.request.sampling, cm.request.sampling)
    differ("seed", rm.request.seed, cm.request.seed)
    differ("max_model_len", rm.request.max_model_len, cm.request.max_model_len)
    for pkg in sorted(set(rm.device.versions) | set(cm.device.versions)):
        differ(f"{pkg} version", rm.device.versions.get(pkg), cm.device.versions.get(pkg))
    if rm.request.logprobs != cm.request.logprobs:
        mode = lambda n: "full vocabulary" if n == -1 else f"top-{n}"  # noqa: E731
        warnings.append(
            f"logprob modes differ: reference {mode(rm.request.logprobs)}, candidate {mode(cm.request.logprobs)}"
        )
    if not (ref.full_vocab and cand.full_vocab):
        warnings.append("top-N rows: KL is restricted to the reference's listed tokens and renormalised (approximate)")
    if rm.request.prompt_logprobs != cm.request.prompt_logprobs:
        side = "reference" if not rm.request.prompt_logprobs else "candidate"
        warnings.append(f"{side} has no prompt logprobs: prompt positions are not compared")
    return warnings


def same_trajectory(ref: Store, cand: Store) -> bool:
    """Candidate recorded on the reference's forced trajectory (or vice versa)."""
    for a, b in ((ref, cand), (cand, ref)):
        run = b.manifest.run or {}
        if run.get("forced") is True or (run.get("golden") and run.get("golden") == a.manifest.digest):
            return True
    return False


@dataclass
class SeqPlan:
    index: int
    prompt_len: int
    ref_len: int  # generated tokens on each side
    cand_len: int
    common: int  # generated positions both sides have
    first_divergence: int | None  # generated index of the first differing token
    compared: int  # generated positions compared
    ref_token: int | None = None  # tokens at the first divergence
    cand_token: int | None = None


@dataclass
class Pairs:
    """Row pairs of one kind: reference row, candidate row, sequence, position."""

    ref: np.ndarray
    cand: np.ndarray
    seq: np.ndarray
    pos: np.ndarray
    token: np.ndarray  # the reference's token at that position (what the row predicted)

    def __len__(self) -> int:
        return len(self.ref)


@dataclass
class Plan:
    forced: bool
    sequences: list[SeqPlan]
    pairs: dict[str, Pairs]
    warnings: list[str] = field(default_factory=list)

    @property
    def total_rows(self) -> int:
        return sum(len(p) for p in self.pairs.values())


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def build_plan(ref: Store, cand: Store) -> Plan:
    forced = same_trajectory(ref, cand)
    warnings: list[str] = []
    seqs: list[SeqPlan] = []
    gen = {k: [] for k in ("ref", "cand", "seq", "pos", "token")}
    pr = {k: [] for k in ("ref", "cand", "seq", "pos", "token")}
    r_off, c_off = ref.row_offsets(GENERATED), cand.row_offsets(GENERATED)
    do_prompt = ref.manifest.request.prompt_logprobs and cand.manifest.request.prompt_logprobs
    rp_off, cp_off = ref.row_offsets(PROMPT), cand.row_offsets(PROMPT)
    for rs, cs in zip(ref.manifest.sequences, cand.manifest.sequences):
        i, plen = rs.index, rs.prompt_len
        rtok, ctok = ref.tokens(i), cand.tokens(i)
        rg, cg = rtok[plen:], ctok[plen:]
        common = min(len(rg), len(cg))
        diff_at = np.flatnonzero(rg[:common] != cg[:common])
        first = int(diff_at[0]) if len(diff_at) else None
        if rs.generated_len != cs.generated_len:
            warnings.append(
                f"sequence {i}: reference generated {rs.generated_len} tokens ({rs.finish_reason}), "
                f"candidate {cs.generated_len} ({cs.finish_reason}); comparing the common {common}"
            )
        n = common if (forced or first is None) else first + 1
        sp = SeqPlan(i, plen, rs.generated_len, cs.generated_len, common, first, n)
        if first is not None:
            sp.ref_token, sp.cand_token = int(rg[first]), int(cg[first])
        seqs.append(sp)
        j = np.arange(n, dtype=np.int64)
        gen["ref"].append(r_off[i] + j)
        gen["cand"].append(c_off[i] + j)
        gen["seq"].append(np.full(n, i, np.int64))
        gen["pos"].append(plen + j)
        gen["token"].append(rg[:n].astype(np.int64))
        if do_prompt and plen > 1:
            m = plen - 1
            k = np.arange(m, dtype=np.int64)
            pr["ref"].append(rp_off[i] + k)
            pr["cand"].append(cp_off[i] + k)
            pr["seq"].append(np.full(m, i, np.int64))
            pr["pos"].append(k + 1)
            pr["token"].append(rtok[1:plen].astype(np.int64))
    pairs = {
        GENERATED: Pairs(**{k: _cat(v) for k, v in gen.items()}),
        PROMPT: Pairs(**{k: _cat(v) for k, v in pr.items()}),
    }
    return Plan(forced=forced, sequences=seqs, pairs=pairs, warnings=warnings)


def blocks(pairs: Pairs | Sequence[Pairs], block_rows: int, align: int = 16) -> list[tuple[int, int]]:
    """Cuts the pair list into [a, b) slices contiguous in the reference and in
    every candidate.

    ``pairs`` is one candidate's Pairs, or several candidates' that share the
    reference rows (one pass over the reference serves them all).
    Cuts also fall where the reference row crosses a multiple of ``align``
    past ``block_rows``, so reads start on chunk boundaries where possible.
    """
    group = [pairs] if isinstance(pairs, Pairs) else list(pairs)
    first = group[0]
    n = len(first)
    for p in group[1:]:
        if not np.array_equal(p.ref, first.ref):
            raise ValueError("blocks(): the candidates' pairs must share the reference rows")
    if n == 0:
        return []
    jump = np.diff(first.ref) != 1
    for p in group:
        jump |= np.diff(p.cand) != 1
    breaks = np.flatnonzero(jump) + 1
    bounds = [0, *breaks.tolist(), n]
    out: list[tuple[int, int]] = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        start = a
        while start < b:
            row = int(first.ref[start])
            stop_row = (row // align) * align + block_rows
            stop = min(b, start + max(stop_row - row, 1))
            out.append((start, stop))
            start = stop
    return out
