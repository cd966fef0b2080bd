"""Stand-in for ``rebel.kv_cache``: device-aligned KV buffers for the NIXL connectors.

Replaces: rebel-compiler's ``aligned_tensor``. Why: imported by the KV-transfer
connectors (``distributed/kv_transfer/.../rbln_nixl/registration.py:21``) that
vLLM's connector factory may load; parity never transfers KV caches, so it refuses.
"""


def aligned_tensor(*args, **kwargs):
    raise RuntimeError("rebel.kv_cache.aligned_tensor (NIXL connectors) is not in the CPU stand-in")
