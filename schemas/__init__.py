"""The parity store format: manifest schema, content addressing, reader and writer.

The normative description is ``SPEC.md`` in this folder.
"""

from .digest import canonical_json, content_digest, hash_array, request_key
from .manifest import SCHEMA_VERSION, ArrayInfo, Device, Manifest, ModelRef, Request, SequenceInfo
from .store import GENERATED, PROMPT, STORE_SUFFIX, Store, StoreWriter, open_store, store_name, stores_in

__all__ = [
    "SCHEMA_VERSION", "ArrayInfo", "Device", "GENERATED", "Manifest", "ModelRef", "PROMPT",
    "Request", "STORE_SUFFIX", "SequenceInfo", "Store", "StoreWriter", "canonical_json",
    "content_digest", "hash_array", "open_store", "request_key", "store_name", "stores_in",
]
