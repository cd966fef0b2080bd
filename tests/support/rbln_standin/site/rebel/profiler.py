"""Stand-in for ``rebel.profiler``: the NPU profiler, which records nothing here.

Replaces: rebel-compiler's profiler. Why: ``v1/worker/rbln_worker.py:26``
imports it and calls ``start``/``done`` around a profiled run.
"""


def start(*args, **kwargs):
    return None


def done(*args, **kwargs):
    return None
