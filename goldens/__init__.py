"""Goldens on the Hugging Face Hub: push, pull, list, and resolve by request key.

Library code: never prints (logs to the ``parity`` logger), raises parity errors.
"""

from .catalog import GoldenEntry
from .download import pull, resolve_by_request, resolve_store
from .remote import list_goldens
from .upload import PushResult, push, push_many
from parity.hub import HubRef, is_hub_reference

__all__ = [
    "GoldenEntry", "HubRef", "PushResult", "is_hub_reference", "list_goldens", "pull", "push", "push_many",
    "resolve_by_request", "resolve_store",
]
