"""Token texts for the reports: ``decoder_for(store, tokenizer=None)``.

A diff runs where the model may not be: the decoder is optional. It loads a
``tokenizer.json`` with the ``tokenizers`` library (imported lazily; no
torch, no transformers), from an explicit file or directory, else from the
model or tokenizer directory the store was recorded with, when that directory
exists on this machine. Without either, reports show token ids.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from parity.errors import UsageError
from parity.schemas import Store
from parity.settings import settings

log = logging.getLogger("parity")

TOKENIZER_FILE = "tokenizer.json"


def _file_in(path: Path) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir() and (path / TOKENIZER_FILE).is_file():
        return path / TOKENIZER_FILE
    return None


def _recorded(store: Store) -> Path | None:
    """The recording's tokenizer.json, when its directory is on this machine."""
    args = store.manifest.device.engine_args or {}
    for key in ("tokenizer", "model"):
        value = args.get(key)
        if isinstance(value, str) and value:
            found = _file_in(Path(value).expanduser())
            if found is not None:
                return found
    return None


def decoder_for(store: Store | str | Path | None, tokenizer: str | Path | None = None) -> Callable[[int], str] | None:
    """``decode(id) -> text`` for ``store``'s tokens, or None when no tokenizer is at hand.

    ``tokenizer``: a ``tokenizer.json`` file or a directory holding one; when
    given it must load (a bad path is an error). Otherwise the store's
    manifest (``device.engine_args["tokenizer"]``, then ``["model"]``) is
    tried, and None is returned when that directory is not here. None too
    when the ``tokenizers`` library is not installed. Texts are cached per id.
    """
    if tokenizer is not None:
        path = _file_in(Path(tokenizer).expanduser())
        if path is None:
            raise UsageError(f"no {TOKENIZER_FILE} at {tokenizer}",
                             hint=f"give a {TOKENIZER_FILE} file or the model directory that holds it")
    elif store is not None:
        path = _recorded(store if isinstance(store, Store) else Store.open(store, fast_read=settings().fast_read))
        if path is None:
            log.debug("no local tokenizer for %s: the report shows token ids", getattr(store, "path", store))
            return None
    else:
        return None
    try:
        from tokenizers import Tokenizer
    except ImportError:
        log.warning("the tokenizers library is not installed: the report shows token ids, not texts")
        return None
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed files
        if tokenizer is not None:
            raise UsageError(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                             hint=f"give a {TOKENIZER_FILE} written by the tokenizers library") from None
        log.warning("cannot load the recorded tokenizer %s (%s): the report shows token ids", path, e)
        return None
    log.debug("token texts from %s", path)
    cache: dict[int, str] = {}

    def decode(token: int) -> str:
        text = cache.get(token)
        if text is None:
            # Special tokens are kept: a parity report should show <eos> where it sits.
            text = cache[token] = tok.decode([int(token)], skip_special_tokens=False)
        return text

    return decode
