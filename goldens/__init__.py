"""Goldens on the Hugging Face Hub: push, pull, list, and resolve by request key.

Library code: never prints (logs to the ``parity`` logger), raises parity errors.
"""

from .core import (
    GoldenEntry,
    PushResult,
    list_goldens,
    pull,
    push,
    push_many,
    resolve_by_request,
    resolve_store,
)
from .refs import HubRef, is_hub_reference

__all__ = [
    "GoldenEntry", "HubRef", "PushResult", "is_hub_reference", "list_goldens", "pull", "push", "push_many",
    "resolve_by_request", "resolve_store",
]
