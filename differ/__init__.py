"""Offline comparison of two parity stores (``parity diff``).

``diff(reference, candidate)`` streams both stores block by block, computes
per-position metrics (KL(reference || candidate) over the full vocabulary,
argmax agreement, top-k overlap, delta-p, ranks, |delta logprob|, Pearson,
NaN/inf counts) in float64, and returns a ``Report`` with summaries, the worst
positions and a verdict against optional ``Thresholds``. ``render_text`` and
``render_html`` format a report. Only numpy (and zarr through ``schemas``) is
imported: never torch or vllm.
"""

from .core import diff
from .render import render_html, render_text
from .report import JSON_SCHEMA, Report
from .thresholds import TOLERANCE_PRESETS, Thresholds

__all__ = ["diff", "Report", "Thresholds", "TOLERANCE_PRESETS", "render_text", "render_html", "JSON_SCHEMA"]
