"""``parity bisect``: the first depth at which a device drifts from its goldens.

A golden recorded at depth K (the model cut to its first K layers, final norm
and LM head kept) and a candidate recorded at K on its trajectory agree when
the device computes the first K layers right. Drift that appears after layer
j shows at every depth from j+1 on, so the first failing depth is found by
binary search over the depths the goldens cover: the full depth first (if it
passes there is nothing to find), then halving. Each probe is a recording
(on an NPU, a compile), so the count is what matters: 1 + ceil(log2 n) for n
golden depths. ``sweep`` probes every depth instead, which also shows drift
that comes and goes.

Candidates go to the output directory and a depth whose recording is already
there (same request key, device, versions and golden) is reused, so an
interrupted bisect resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from parity import goldens
from parity.differ.render import fmt as _fmt
from parity.differ.svg import kl_by_depth
from parity.errors import GoldenNotFoundError, UsageError
from parity.hub import HubRef, LocalRef, RepoRef, resolve_ref
from parity.schemas import Manifest, Store, stores_in
from parity.settings import settings
from parity.recorder.depths import DepthRecording, at_depth, parse_depths, record_or_reuse
from parity.recorder.plan import RecordConfig
from parity.recorder.sink import Progress
from parity.recorder.truncate import layer_count

log = logging.getLogger("parity")

SCHEMA = "parity.bisect/1"
HALF_PRECISION = ("bfloat16", "float16", "half", "bf16", "fp16")


@dataclass
class GoldenAtDepth:
    """One golden of the set: a local store, or a Hub entry pulled when first probed."""

    depth: int
    digest: str
    label: str
    created_at: str
    path: Path | None = None
    entry: object | None = None  # goldens.GoldenEntry

    def local(self) -> Path:
        if self.path is None:
            self.path = goldens.pull(self.entry.ref())
        return self.path


@dataclass
class DepthResult:
    depth: int
    verdict: str
    kl: dict
    top1_agreement: float | None
    positions: int
    golden: GoldenAtDepth
    candidate: DepthRecording
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "num_hidden_layers": self.depth,
            "verdict": self.verdict,
            "kl": self.kl,
            "top1_agreement": self.top1_agreement,
            "positions": self.positions,
            "failures": self.failures,
            "golden": {"digest": self.golden.digest, "path": str(self.golden.path or self.golden.label)},
            "candidate": {"digest": self.candidate.manifest.digest, "path": str(self.candidate.path),
                          "reused": self.candidate.reused},
        }


@dataclass
class BisectResult:
    device: str
    model: str
    total_layers: int
    golden_depths: list[int]
    mode: str  # binary | sweep
    thresholds: dict
    thresholds_source: str
    results: list[DepthResult]  # in probe order
    first_drift_depth: int | None

    @property
    def recordings(self) -> int:
        return sum(not r.candidate.reused for r in self.results)

    @property
    def reused(self) -> int:
        return sum(r.candidate.reused for r in self.results)

    @property
    def exit_code(self) -> int:
        return 1 if self.first_drift_depth is not None else 0

    def by_depth(self) -> list[DepthResult]:
        return sorted(self.results, key=lambda r: r.depth)

    def to_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "first_drift_depth": self.first_drift_depth,
            "depths": [r.to_dict() for r in self.by_depth()],
            "thresholds": self.thresholds,
            "thresholds_source": self.thresholds_source,
            "device": self.device,
            "model": self.model,
            "total_layers": self.total_layers,
            "golden_depths": self.golden_depths,
            "mode": self.mode,
            "probe_order": [r.depth for r in self.results],
            "recordings": self.recordings,
            "reused": self.reused,
        }

    def to_json(self) -> str:
        from parity.differ.report import jsonable

        return json.dumps(jsonable(self.to_dict()), indent=2, allow_nan=False) + "\n"

    def conclusion(self) -> str:
        if self.first_drift_depth is None:
            return f"no drift: every probed depth passes ({len(self.results)} probed of {len(self.golden_depths)})"
        below = [r.depth for r in self.results if r.verdict == "pass" and r.depth < self.first_drift_depth]
        after = f" (depth {max(below)} passes)" if below else ""
        return (f"first drift at depth {self.first_drift_depth} of {self.total_layers}: "
                f"layer {self.first_drift_depth} (1-based) is the first whose output differs{after}")


# -- the golden set --------------------------------------------------------------
def _local_goldens(paths: list[str], total: int) -> list[GoldenAtDepth]:
    out = []
    for path in stores_in(paths):
        m = Store.open(path, fast_read=settings().fast_read).manifest
        if m.run.get("forced"):
            continue  # a candidate that followed some golden, not a golden
        out.append(GoldenAtDepth(m.request.num_hidden_layers or total, m.digest, str(path), m.created_at, path=path,
                                 entry=m))
    return out


def _hub_goldens(repo: str, total: int) -> list[GoldenAtDepth]:
    return [GoldenAtDepth(e.num_hidden_layers or total, e.digest, e.ref(), e.created_at, entry=e)
            for e in goldens.list_goldens(repo)]


def _weights_of(g: GoldenAtDepth) -> str | None:
    if isinstance(g.entry, Manifest):
        return g.entry.request.model.weights_digest
    return getattr(g.entry, "weights_digest", None)


def _device_of(g: GoldenAtDepth) -> str | None:
    if isinstance(g.entry, Manifest):
        return g.entry.device.kind
    return getattr(g.entry, "device", None)


def golden_set(refs: list[str], total: int, *, weights_digest: str | None, device: str,
               notes: Callable[[str], None] = log.info) -> dict[int, GoldenAtDepth]:
    """The golden to follow at each depth: REF is store paths, directories of stores, or a Hub repo."""
    if not refs:
        raise UsageError("--golden is required: a directory of stores, store paths, or a Hub repo ORG/NAME")
    found: list[GoldenAtDepth] = []
    for ref in refs:
        named = resolve_ref(ref)
        if isinstance(named, LocalRef):
            found_here = _local_goldens([ref], total)
        elif isinstance(named, RepoRef):
            found_here = _hub_goldens(named.repo, total)
        elif isinstance(named, HubRef):
            found_here = _local_goldens([str(goldens.resolve_store(ref))], total)
        else:
            raise UsageError(f"--golden {ref!r} is not a store, a directory of stores, or a Hub repo ORG/NAME")
        found += found_here
    # Several goldens at one depth: prefer this model's weights, then a golden recorded
    # on another device than the candidate's (the reference), then the newest.
    chosen: dict[int, GoldenAtDepth] = {}
    for depth in sorted({g.depth for g in found}):
        pool = [g for g in found if g.depth == depth]
        for keep in (lambda g: weights_digest and _weights_of(g) == weights_digest,
                     lambda g: _device_of(g) == "cpu" or _device_of(g) != device):
            narrowed = [g for g in pool if keep(g)]
            pool = narrowed or pool
        pool.sort(key=lambda g: (g.created_at, g.digest), reverse=True)
        if len(pool) > 1:
            notes(f"depth {depth}: {len(pool)} goldens fit; following the newest, {pool[0].digest}")
        chosen[depth] = pool[0]
    if not chosen:
        raise GoldenNotFoundError(f"no goldens in {', '.join(refs)}",
                                  hint="record them on the CPU host: parity record --depths 1,2,4,all")
    bad = sorted(d for d in chosen if d > total)
    if bad:
        raise UsageError(f"a golden was recorded with {bad[0]} layers but the model has {total}",
                         hint="bisect the model the goldens were recorded from")
    return chosen


# -- the search --------------------------------------------------------------------
def default_thresholds(thresholds, golden: Store):
    """The thresholds to judge each depth by: the user's; else none when the
    golden carries a noise floor (its per-position gate judges, in every
    probe's diff); else the preset for the golden's dtype."""
    from parity.differ import Thresholds

    if thresholds is not None and not thresholds.is_empty():
        return thresholds, "given"
    if golden.manifest.floor is not None:
        return Thresholds(), f"the golden's noise floor ({golden.manifest.floor.kind})"
    name = "bf16" if golden.manifest.request.dtype.lower() in HALF_PRECISION else "fp32"
    return Thresholds.preset(name), f"--tolerance {name} (default for the golden's dtype)"


def bisect(cfg: RecordConfig, golden_refs: list[str], *, thresholds=None, eps: float = 0.5, sweep: bool = False,
           depths: str | None = None, reuse: bool = True, progress: Callable[[Progress], None] | None = None,
           on_probe: Callable[[DepthResult], None] | None = None,
           note: Callable[[str], None] = log.info) -> BisectResult:
    """Finds the first depth whose candidate recording fails its diff against the golden at that depth."""
    from parity import differ

    from parity.settings import settings

    from parity.recorder.inputs import resolve_model, weights_digest

    if cfg.engine.num_hidden_layers is not None:
        raise UsageError("parity bisect chooses the depths itself: drop --num-hidden-layers",
                         hint="--depths limits the depths it may probe")
    model = resolve_model(cfg.model, settings().cache_dir, revision=cfg.revision)
    total = layer_count(model.path)
    chosen = golden_set(golden_refs, total,
                        weights_digest=weights_digest(model.path, settings().cache_dir, model.weight_files),
                        device=cfg.device, notes=note)
    if depths:
        allowed = set(parse_depths(depths, total))
        missing = sorted(allowed - set(chosen))
        if missing:
            note(f"no golden at depth {', '.join(map(str, missing))}; those depths are skipped")
        chosen = {d: g for d, g in chosen.items() if d in allowed}
        if not chosen:
            raise GoldenNotFoundError(f"no golden at any of the depths {depths}")
    order = sorted(chosen)
    if order[-1] != total:
        note(f"no full-depth golden ({total} layers): the search covers depths {order[0]} to {order[-1]}")
    results: dict[int, DepthResult] = {}
    judged: list = []  # (thresholds, source) fixed by the first golden probed

    def probe(depth: int) -> DepthResult:
        golden = chosen[depth]
        golden_path = golden.local()
        golden_store = Store.open(golden_path, fast_read=settings().fast_read)
        if not judged:
            judged.append(default_thresholds(thresholds, golden_store))
        rec = record_or_reuse(at_depth(dataclasses.replace(cfg, golden=golden_path), depth), progress,
                              total=total, reuse=reuse)
        report = differ.diff(golden_store, rec.path, thresholds=judged[0][0], eps=eps)
        s = report.summary
        result = DepthResult(depth, report.verdict, s["kl"], s["top1_agreement"], s["positions"], golden, rec,
                             report.failures)
        results[depth] = result
        if on_probe is not None:
            on_probe(result)
        return result

    if sweep:
        for depth in order:
            probe(depth)
        failing = [d for d in order if results[d].verdict == "fail"]
        first = failing[0] if failing else None
    else:
        first = None
        if probe(order[-1]).verdict == "fail":
            lo, hi = -1, len(order) - 1  # order[lo] passes (or lo is before the first), order[hi] fails
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if probe(order[mid]).verdict == "fail":
                    hi = mid
                else:
                    lo = mid
            first = order[hi]
    return BisectResult(
        device=cfg.device, model=model.id, total_layers=total, golden_depths=order,
        mode="sweep" if sweep else "binary", thresholds=judged[0][0].to_dict(), thresholds_source=judged[0][1],
        results=list(results.values()), first_drift_depth=first,
    )


# -- reports ----------------------------------------------------------------------
def render_text(result: BisectResult, color: bool = False) -> str:
    def paint(verdict: str) -> str:
        if not color:
            return verdict
        return f"\033[{'31' if verdict == 'fail' else '32'}m{verdict}\033[0m"

    head = ["DEPTH", "VERDICT", "KL MEAN", "KL P99", "KL MAX", "TOP-1", "CANDIDATE"]
    rows = []
    for r in result.by_depth():
        rows.append([f"{r.depth}/{result.total_layers}", r.verdict, _fmt(r.kl.get("mean")), _fmt(r.kl.get("p99")),
                     _fmt(r.kl.get("max")), _fmt(r.top1_agreement),
                     f"{r.candidate.path.name}{' (reused)' if r.candidate.reused else ''}"])
    widths = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head))]
    lines = [f"bisect {result.model} on {result.device}: {result.mode} search over golden depths "
             f"{', '.join(map(str, result.golden_depths))}; thresholds {result.thresholds_source}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths)]
        cells[1] = paint(row[1]) + " " * (widths[1] - len(row[1]))
        lines.append("  ".join(cells).rstrip())
    unprobed = [d for d in result.golden_depths if d not in {r.depth for r in result.results}]
    if unprobed:
        lines.append(f"not probed: depths {', '.join(map(str, unprobed))}")
    lines.append(f"{len(result.results)} depths probed: {result.recordings} recorded, {result.reused} reused")
    lines.append(result.conclusion())
    return "\n".join(lines)


def _short(digest: str) -> str:
    return digest.split(":")[-1][:16]


def render_html(result: BisectResult) -> str:
    """A self-contained page: KL (mean, p99, max) against depth on a log scale, and the table."""
    pts = result.by_depth()
    plot = kl_by_depth([r.depth for r in pts], [r.kl for r in pts], [r.verdict for r in pts], result.total_layers,
                       result.thresholds.get("max_kl"), result.first_drift_depth)
    rows = "".join(
        f"<tr class='{r.verdict}'><td>{r.depth}/{result.total_layers}</td><td>{r.verdict}</td>"
        f"<td>{_fmt(r.kl.get('mean'))}</td><td>{_fmt(r.kl.get('p99'))}</td><td>{_fmt(r.kl.get('max'))}</td>"
        f"<td>{_fmt(r.top1_agreement)}</td><td><code title='{html.escape(r.golden.digest)}'>"
        f"{html.escape(_short(r.golden.digest))}</code></td><td><code title='{html.escape(str(r.candidate.path))}'>"
        f"{html.escape(_short(r.candidate.manifest.digest))}</code>{' (reused)' if r.candidate.reused else ''}</td></tr>"
        for r in pts)
    title = html.escape(f"parity bisect: {result.model} on {result.device}")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font:14px system-ui,sans-serif;margin:24px;color:#222}} table{{border-collapse:collapse}}
td,th{{padding:3px 10px;white-space:nowrap;border-bottom:1px solid #eee;text-align:left}} tr.fail td:nth-child(2){{color:#c00;font-weight:600}}
tr.pass td:nth-child(2){{color:#080}} code{{font-size:12px}}</style></head>
<body><h1>{title}</h1>
<p><b>{html.escape(result.conclusion())}</b></p>
<p>{html.escape(result.mode)} search over golden depths {html.escape(", ".join(map(str, result.golden_depths)))};
{len(result.results)} probed ({result.recordings} recorded, {result.reused} reused); thresholds
{html.escape(result.thresholds_source)}: <code>{html.escape(json.dumps({k: v for k, v in result.thresholds.items() if v is not None}))}</code></p>
{plot}
<table><tr><th>depth</th><th>verdict</th><th>KL mean</th><th>KL p99</th><th>KL max</th><th>top-1</th><th>golden</th><th>candidate</th></tr>
{rows}</table></body></html>
"""
