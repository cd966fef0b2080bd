"""The parity store format: manifest schema, content addressing, reader and writer.

The normative description is ``SPEC.md`` in this folder.
"""

from .digest import canonical_json, content_digest, hash_array, request_key
from .layout import GENERATED, PROMPT, STORE_SUFFIX, store_name
from .manifest import SCHEMA_VERSION, ArrayInfo, Device, Manifest, ModelRef, Request, SequenceInfo
from .reader import Store, stores_in
from .writer import StoreWriter

__all__ = [
    "SCHEMA_VERSION", "ArrayInfo", "Device", "GENERATED", "Manifest", "ModelRef", "PROMPT",
    "Request", "STORE_SUFFIX", "SequenceInfo", "Store", "StoreWriter", "canonical_json",
    "content_digest", "hash_array", "request_key", "store_name", "stores_in",
]
