"""Stand-in for ``rebel.flags``: the runtime's switches.

Replaces: rebel-compiler's flag module. Why: ``v1/worker/rbln_worker.py:25``
imports it and reads ``RBLN_PROFILER``; no NPU profiler exists here.
"""

RBLN_PROFILER = False
