"""Offline comparison of two parity stores (``parity diff``).

``diff(reference, candidate)`` streams both stores block by block, computes
per-position metrics (KL(reference || candidate) over the full vocabulary,
argmax agreement, top-k overlap, delta-p, ranks, |delta logprob|, Pearson,
NaN/inf counts) in float64, and returns a ``Report`` with summaries, the worst
positions and a verdict against optional ``Thresholds``. ``render_text`` and
``render_html`` format a report (``render_html`` also the reports of several
candidates of one reference, with per-position top-5 lists when they were
diffed with ``details=True``); ``decoder_for(store)`` gives token texts.
Only numpy (and zarr through ``schemas``) is imported: never torch or vllm.

``compare(reference, [c1, c2, ...])`` gives one Report per candidate from a
single streaming pass over the reference (for candidates on its trajectory).
``diff(..., baseline=STORE, max_floor_ratio=R)`` measures a noise floor: the
baseline is compared with the reference in the same pass and the report's
``floor`` sets the candidate beside it (see ``differ.floor``).

The stages, in the data's order: ``plan`` (pair the stores' rows), ``stream``
(read blocks, per-position metrics with the kernels of ``metrics``),
``assemble`` (summaries), ``floor`` and ``verdict`` (``judge``, a pure
function of the summaries), ``report`` (the Report, JSON); ``render``,
``html`` and ``svg`` format it; ``api`` runs them.
"""

from .api import compare, diff
from .html import render_html
from .render import render_text
from .report import JSON_SCHEMA, Report
from .thresholds import TOLERANCE_PRESETS, Thresholds
from .tokens import decoder_for

__all__ = ["diff", "compare", "Report", "Thresholds", "TOLERANCE_PRESETS", "render_text", "render_html", "JSON_SCHEMA",
           "decoder_for"]
