"""Hub references and the repository layout of goldens.

Layout of a goldens dataset repo::

    goldens/<request key hex>/<hex24>.parity.zarr/...   the store, as recorded
    index/<content digest hex>.json                     a small summary (GoldenEntry)
    index.json                                          every golden's summary (what `ls` reads)
    README.md                                           the dataset card, listing every golden

``index.json`` and the card are rewritten by every push in the commit that
adds the stores; the per-golden files stay because parity before the
aggregated index reads only those (and still writes only those).

A hub reference names one store, pinned to a commit when printed by push:
``hf://datasets/ORG/NAME@<commit>/goldens/<key hex>/<hex24>.parity.zarr``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

from parity.errors import UsageError
from parity.schemas.digest import ALGORITHM, parse_tagged
from parity.schemas.store import STORE_SUFFIX, store_name

SCHEME = "hf://"
PREFIX = "hf://datasets/"
GOLDENS_DIR = "goldens"
INDEX_DIR = "index"
INDEX_FILE = "index.json"
CARD_FILE = "README.md"
MIN_PREFIX = 6
_DIGEST_LIKE = re.compile(rf"^(?:{re.escape(ALGORITHM)}:)?([0-9a-f]{{{MIN_PREFIX},32}})$")
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_INDEX_FILE = re.compile(rf"^{INDEX_DIR}/([0-9a-f]{{32}})\.json$")


def is_hub_reference(ref: str) -> bool:
    return isinstance(ref, str) and ref.startswith(SCHEME)


def digest_prefix(ref: str) -> str | None:
    """The hex part of a content digest or of a unique prefix of one, else None."""
    m = _DIGEST_LIKE.match(ref.strip().lower())
    return m.group(1) if m else None


def check_repo(repo: str) -> str:
    if not isinstance(repo, str) or not _REPO_ID.match(repo):
        raise UsageError(f"not a Hub repo id: {repo!r}", hint="pass --repo ORG/NAME")
    return repo


def store_path(request_key: str, digest: str) -> str:
    return f"{GOLDENS_DIR}/{parse_tagged(request_key)}/{store_name(digest)}"


def index_path(digest: str) -> str:
    return f"{INDEX_DIR}/{parse_tagged(digest)}.json"


def index_digest(path: str) -> str | None:
    """The content digest hex a per-golden index file is named after, else None."""
    m = _INDEX_FILE.match(path)
    return m.group(1) if m else None


@dataclass(frozen=True)
class HubRef:
    repo: str
    path: str
    revision: str | None = None

    def __str__(self) -> str:
        rev = f"@{quote(self.revision, safe='')}" if self.revision else ""
        return f"{PREFIX}{self.repo}{rev}/{self.path}"

    @property
    def store_name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @classmethod
    def parse(cls, ref: str) -> "HubRef":
        if not ref.startswith(PREFIX):
            raise UsageError(
                f"not a dataset hub reference: {ref!r}",
                hint="use hf://datasets/ORG/NAME[@REVISION]/goldens/<key>/<name>.parity.zarr, as printed by `parity push`",
            )
        parts = ref[len(PREFIX):].strip("/").split("/")
        if len(parts) < 3:
            raise UsageError(f"hub reference {ref!r} names no store", hint="use the reference printed by `parity push`")
        org, name, rest = parts[0], parts[1], parts[2:]
        revision = None
        if "@" in name:
            name, _, rev = name.partition("@")
            revision = unquote(rev) or None
        repo = check_repo(f"{org}/{name}")
        path = "/".join(rest)
        if not path.endswith(STORE_SUFFIX) or ".." in rest:
            raise UsageError(
                f"hub reference {ref!r} does not end in a store directory (*{STORE_SUFFIX})",
                hint="use the reference printed by `parity push`",
            )
        return cls(repo=repo, path=path, revision=revision)
