"""The repository layout of goldens: where a store and its index files go in a goldens repo.

Layout of a goldens dataset repo::

    goldens/<request key hex>/<hex24>.parity.zarr/...   the store, as recorded
    index/<content digest hex>.json                     a small summary (GoldenEntry)
    index.json                                          every golden's summary (what `ls` reads)
    README.md                                           the dataset card, listing every golden

``index.json`` and the card are rewritten by every push in the commit that
adds the stores; the per-golden files stay because parity before the
aggregated index reads only those (and still writes only those).

A hub reference (``parity.hub.HubRef``) names one store, pinned to a commit
when printed by push:
``hf://datasets/ORG/NAME@<commit>/goldens/<key hex>/<hex24>.parity.zarr``.
"""

from __future__ import annotations

import re

from parity.schemas.digest import ALGORITHM, parse_tagged
from parity.schemas import store_name

GOLDENS_DIR = "goldens"
INDEX_DIR = "index"
INDEX_FILE = "index.json"
CARD_FILE = "README.md"
MIN_PREFIX = 6
_DIGEST_LIKE = re.compile(rf"^(?:{re.escape(ALGORITHM)}:)?([0-9a-f]{{{MIN_PREFIX},32}})$")
_INDEX_FILE = re.compile(rf"^{INDEX_DIR}/([0-9a-f]{{32}})\.json$")


def digest_prefix(ref: str) -> str | None:
    """The hex part of a content digest or of a unique prefix of one, else None."""
    m = _DIGEST_LIKE.match(ref.strip().lower())
    return m.group(1) if m else None


def store_path(request_key: str, digest: str) -> str:
    return f"{GOLDENS_DIR}/{parse_tagged(request_key)}/{store_name(digest)}"


def index_path(digest: str) -> str:
    return f"{INDEX_DIR}/{parse_tagged(digest)}.json"


def index_digest(path: str) -> str | None:
    """The content digest hex a per-golden index file is named after, else None."""
    m = _INDEX_FILE.match(path)
    return m.group(1) if m else None
