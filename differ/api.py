"""``diff`` and ``compare``: check and plan the stores, stream them
(``stream``), summarise each candidate (``assemble``), measure the noise floor
(``floor``) and judge every report once (``verdict``)."""

from __future__ import annotations

import logging
import math
import numbers
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from parity.errors import ParityError, UsageError
from parity.schemas import Store
from parity.schemas.floorlink import open_floor
from parity.schemas.streamcheck import check_opened
from parity.settings import settings

from . import assemble, floor, metrics
from .assemble import Decode
from .flips import TIE_STEPS
from .floor import FloorRule
from .plan import Plan, build_plan, check_compatible
from .report import Report
from .stream import Progress, stream
from .summary import Summaries
from .thresholds import Thresholds
from .verdict import judge

log = logging.getLogger("parity")


def diff(
    reference: str | Path | Store,
    candidate: str | Path | Store,
    *,
    baseline: str | Path | Store | None = None,
    max_floor_ratio: float | None = None,
    thresholds: Thresholds | None = None,
    eps: float = 0.5,
    top_n_rule: int = 5,
    worst: int = 10,
    decode: Decode | None = None,
    progress: Progress | None = None,
    kernel: str | None = None,
    details: bool = False,
    use_floor: bool = True,
    floor_rule: FloorRule | bool = True,
    tie_steps: float = TIE_STEPS,
) -> Report:
    """Compares two stores position by position; see the package docstring.

    ``kernel``: "fused" (C) or "numpy" for full-vocabulary rows; default from
    PARITY_DIFF_KERNEL, else the C kernel when it was built.

    ``baseline``: a store of accepted numerics (e.g. the same request in
    bfloat16, or on the hf device), compared with the reference in the same
    pass; the report's ``floor`` then sets the candidate beside it.
    ``max_floor_ratio``: fail when the candidate's generated KL p99 is more
    than this many times the baseline's (see ``floor.ratio``).

    ``details``: also keep both sides' top-5 ids and logprobs per position in
    ``report.positions`` (and, with ``decode``, the texts of every id they and
    the tokens use in ``report.token_texts``) for the HTML report's hover. Off
    by default: it costs a top-5 selection per row and 40 bytes a position.

    ``use_floor``: with no ``baseline``, use the noise floor the reference
    carries (a golden recorded with ``--floor``). ``floor_rule``: the
    per-position gate against the floor (``floor.FloorRule``; True: its
    defaults; False: the floor is reported, not gated). ``tie_steps``: argmax
    flips within this many of the candidate dtype's rounding steps are
    near-ties (``flips``).
    """
    reference, baseline = with_floor(reference, baseline, use_floor)
    max_floor_ratio = check_floor_ratio(max_floor_ratio, baseline)
    thresholds = thresholds or Thresholds()
    rule = _rule(floor_rule)
    opts = dict(eps=eps, top_n_rule=top_n_rule, worst=worst, decode=decode, progress=progress, kernel=kernel,
                tie_steps=tie_steps)
    t0 = time.perf_counter()
    if baseline is None:
        (s,), (texts,) = _summarise(reference, [candidate], [None], [details], **opts)
        report = assemble.report(s, thresholds, token_texts=texts)
    else:
        # The baseline only feeds the floor's summary: no details for it.
        (s, base), (texts, _) = _summarise(reference, [candidate, baseline], [None, "baseline"], [details, False],
                                           **opts)
        report = assemble.report(s, thresholds, floor.measure(s, base, thresholds, max_floor_ratio, rule), texts)
    log.info("diff done in %.2fs: verdict %s", time.perf_counter() - t0, report.verdict)
    return report


def compare(
    reference: str | Path | Store,
    candidates: Sequence[str | Path | Store],
    *,
    thresholds: Thresholds | None = None,
    eps: float = 0.5,
    top_n_rule: int = 5,
    worst: int = 10,
    decode: Decode | None = None,
    progress: Progress | None = None,
    kernel: str | None = None,
    details: bool | Sequence[bool] = False,
    tie_steps: float = TIE_STEPS,
) -> list[Report]:
    """One Report per candidate, as ``diff(reference, candidate, use_floor=False)`` gives it.

    Candidates whose row pairs of a kind use the same reference rows (all
    recorded on the reference's forced trajectory, say) share one streaming
    pass: each reference block is read once and compared with every one of
    them. ``progress`` counts row pairs over all candidates. ``details``: as
    for ``diff``, for every candidate, or one flag per candidate (a baseline
    that only feeds the floor needs none).
    """
    if isinstance(candidates, (str, Path, Store)):
        raise UsageError("compare() takes a list of candidate stores; diff() compares one")
    candidates = list(candidates)
    thresholds = thresholds or Thresholds()
    t0 = time.perf_counter()
    summaries, texts = _summarise(reference, candidates, _labels(len(candidates)), _flags(details, len(candidates)),
                                  eps=eps, top_n_rule=top_n_rule, worst=worst, decode=decode, progress=progress,
                                  kernel=kernel, tie_steps=tie_steps)
    reports = [assemble.report(s, thresholds, token_texts=t) for s, t in zip(summaries, texts)]
    log.info("compare done in %.2fs: verdicts %s", time.perf_counter() - t0, ", ".join(r.verdict for r in reports))
    return reports


def compare_to_floor(
    reference: str | Path | Store,
    candidates: Sequence[str | Path | Store],
    baseline: str | Path | Store,
    *,
    max_floor_ratio: float | None = None,
    thresholds: Thresholds | None = None,
    eps: float = 0.5,
    top_n_rule: int = 5,
    worst: int = 10,
    decode: Decode | None = None,
    progress: Progress | None = None,
    kernel: str | None = None,
    details: bool = False,
    floor_rule: FloorRule | bool = True,
    tie_steps: float = TIE_STEPS,
) -> list[Report]:
    """``compare`` with a measured noise floor, ``diff(..., baseline=)`` for
    several candidates: the baseline is one more candidate of the same pass,
    and each report sets its candidate beside it."""
    max_floor_ratio = check_floor_ratio(max_floor_ratio, baseline)
    rule = _rule(floor_rule)
    stores = [*candidates, baseline]
    thresholds = thresholds or Thresholds()
    t0 = time.perf_counter()
    # The baseline's per-position detail (the HTML report's top-5) is never shown.
    (*summaries, base), texts = _summarise(reference, stores, _labels(len(stores)),
                                           [bool(details)] * len(candidates) + [False], eps=eps,
                                           top_n_rule=top_n_rule, worst=worst, decode=decode, progress=progress,
                                           kernel=kernel, tie_steps=tie_steps)
    # Each store's verdict before the floor's gate, the baseline's last: what this line has always listed.
    log.info("compare done in %.2fs: verdicts %s", time.perf_counter() - t0,
             ", ".join(judge(s, thresholds).verdict for s in (*summaries, base)))
    return [assemble.report(s, thresholds, floor.measure(s, base, thresholds, max_floor_ratio, rule), t)
            for s, t in zip(summaries, texts)]


def with_floor(reference: str | Path | Store, baseline, use_floor: bool) -> tuple[str | Path | Store, object]:
    """(reference, baseline): with no baseline given, the floor the reference
    carries (``use_floor``), opened and checked against its link."""
    if baseline is not None or not use_floor:
        return reference, baseline
    ref = _open(reference)
    linked = open_floor(ref, fast_read=settings().fast_read)
    if linked is not None:
        log.info("diff: using the noise floor %s (%s) the reference carries", linked.manifest.digest,
                 ref.manifest.floor.kind)
    return ref, linked


def _rule(floor_rule: FloorRule | bool) -> FloorRule | None:
    if floor_rule is True:
        return FloorRule()
    return floor_rule or None


def check_floor_ratio(ratio: float | None, baseline) -> float | None:
    if ratio is None:
        return None
    if baseline is None:
        raise UsageError("max_floor_ratio needs a baseline store to measure the floor on")
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or math.isnan(ratio) or ratio < 0:
        raise UsageError(f"max_floor_ratio must be a non-negative number, got {ratio!r}")
    return float(ratio)


def _labels(n: int) -> list[str | None]:
    """What errors call each compared store: nothing when there is one."""
    return [None] if n == 1 else [f"candidate {i + 1}" for i in range(n)]


def _flags(details: bool | Sequence[bool], n: int) -> list[bool]:
    if isinstance(details, (bool, np.bool_)):
        return [bool(details)] * n
    flags = [bool(d) for d in details]
    if len(flags) != n:
        raise UsageError(f"details: {len(flags)} flags for {n} candidates")
    return flags


def _open(x: str | Path | Store) -> Store:
    return x if isinstance(x, Store) else Store.open(x, fast_read=settings().fast_read)


def _checked(ref: Store, cand: Store, label: str | None) -> tuple[list[str], Plan]:
    """(warnings, plan); errors name the side when several are compared."""
    try:
        warnings = check_compatible(ref, cand)
        plan = build_plan(ref, cand)
    except ParityError as e:
        if label is None:
            raise
        raise type(e)(f"{label} {cand.path}: {e}", hint=e.hint) from None
    return warnings + plan.warnings, plan


def _summarise(reference, candidates: list, labels: list[str | None], details: list[bool], *, eps: float,
               top_n_rule: int, worst: int, decode: Decode | None, progress: Progress | None,
               kernel: str | None, tie_steps: float = TIE_STEPS) -> tuple[list[Summaries], list[dict[int, str]]]:
    """(summaries, token texts) of every candidate, from one streaming pass
    per group of candidates on the same reference rows."""
    kernel = metrics.resolve_kernel(kernel or settings().diff_kernel)
    ref = _open(reference)
    cands = [_open(c) for c in candidates]
    for store in (ref, *cands):
        # A missing file would read back as zeros and give plausible metrics.
        store.check_complete()
        # Stores are other people's bytes: what is read must be what the digests name
        # (the row arrays are checked as they stream).
        check_opened(store)
    checked = [_checked(ref, c, label) for c, label in zip(cands, labels)]
    plans = [plan for _, plan in checked]
    for cand, plan in zip(cands, plans):
        log.info("diff: %s vs %s, %d row pairs (%s), %s kernel", ref.path, cand.path, plan.total_rows,
                 "forced trajectory" if plan.forced else "free-running", kernel)
    positions = stream(ref, cands, plans, eps=eps, kernel=kernel, details=details, progress=progress)
    summaries = [
        assemble.summarise(ref, cand, plan, warnings, pos, eps=eps, top_n_rule=top_n_rule, worst=worst, decode=decode,
                           tie_steps=tie_steps)
        for cand, (warnings, plan), pos in zip(cands, checked, positions)
    ]
    texts = assemble.TokenTexts(decode)
    return summaries, [texts.of(s.positions) if want and decode is not None else {}
                       for s, want in zip(summaries, details)]
