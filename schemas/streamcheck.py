"""Checking the rows a reader streams against the manifest's digests, in the
same pass (SPEC.md, "What readers check").

A store's digests are not signatures: whoever writes a store can recompute
them. What they guarantee is that what a command read is what the store's
content digest names, so a store that ``verify`` rejects is never judged.
``RowCheck`` re-derives a row array's per-sequence block digests from the
blocks a diff reads, in row order; ``finish`` reads whatever rows of the
array the pass skipped (a free-running diff stops at the first divergence)
and compares. Small 1-D arrays (token ids, offsets, block starts) are
checked whole when a command opens a store (``check_vectors``).
"""

from __future__ import annotations

import threading
from dataclasses import replace
import numpy as np

from parity.errors import StoreCorruptError

from .digest import ArrayHasher, hash_array, rows_digest
from .layout import row_array_names

# Rows read per step when finish() completes a sequence the pass skipped.
FILL_ROWS = 256


class RowCheck:
    """The digests of one row array, re-derived from rows fed in order."""

    def __init__(self, store, name: str):
        info = store.manifest.arrays[name]
        self.path, self.name, self.info = store.path, name, info
        self.width = int(info.shape[1])
        self.dtype = np.dtype(info.dtype)
        kind = "prompt" if name.startswith(row_array_names("prompt")[0]) else "generated"
        starts, counts = store._blocks(kind)
        self.starts = np.asarray(starts, np.int64)
        self.ends = self.starts + np.asarray(counts, np.int64)
        self.order = np.argsort(self.starts, kind="stable")
        self.sorted_starts = self.starts[self.order]
        self.hashers = [ArrayHasher(self.dtype) for _ in counts]
        self.next = self.starts.copy()  # the next row each sequence's hash expects
        self._read = lambda a, b: store.rows(kind, a, b, ids=name.endswith("_ids"))

    def feed(self, start: int, rows: np.ndarray) -> None:
        """Rows [start, start + len(rows)); rows outside every block (padding) are skipped."""
        stop = start + len(rows)
        i = int(np.searchsorted(self.sorted_starts, start, side="right")) - 1
        i = max(i, 0)
        while i < len(self.order):
            s = int(self.order[i])
            a, b = max(start, int(self.starts[s])), min(stop, int(self.ends[s]))
            if int(self.starts[s]) >= stop:
                break
            if a < b and a == self.next[s]:  # a sequence's rows out of order are hashed again by finish()
                self.hashers[s].update(rows[a - start:b - start])
                self.next[s] = b
            i += 1

    def finish(self) -> None:
        """Hashes the rows the pass skipped, then compares every digest; a
        mismatch is a StoreCorruptError naming the array (and the sequence
        when the manifest has block digests)."""
        digests = []
        for s, hasher in enumerate(self.hashers):
            # Rows from the first one not fed in order on: what the pass skipped or read out of order.
            for a in range(int(self.next[s]), int(self.ends[s]), FILL_ROWS):
                hasher.update(self._read(a, min(a + FILL_ROWS, int(self.ends[s]))))
            digests.append(hasher.hexdigest((int(self.ends[s] - self.starts[s]), self.width)))
        blocks = getattr(self.info, "blocks", None)
        if blocks:
            for s, (got, want) in enumerate(zip(digests, blocks)):
                if got != want:
                    raise StoreCorruptError(f"{self.path}: array {self.name!r}, sequence {s}: the rows read do not "
                                            "match their recorded digest", hint=_HINT)
        if rows_digest(self.dtype, self.width, digests) != self.info.digest:
            raise StoreCorruptError(f"{self.path}: array {self.name!r}: the rows read do not match its recorded "
                                    "digest", hint=_HINT)


_HINT = "the store is damaged or was edited: pull or record it again (`parity verify` checks it whole)"


class Checks:
    """The row checks of a pass over several stores, fed in block order.

    Blocks are read on a pool of workers; each array's rows are fed in block
    order (``feed_in_turn``): the worker holding block i feeds an array once
    blocks 0..i-1 have fed it. Arrays take turns independently, so one
    worker hashes the reference's block while another hashes a candidate's.
    Blocks start in order, so every wait ends.
    """

    def __init__(self):
        self._checks: dict[tuple[int, str], RowCheck] = {}
        self._cond = threading.Condition()
        self._turns: dict[int, int] = {}  # id(check) -> the block whose rows it takes next
        self._aborted = False

    def of(self, store, name: str) -> RowCheck:
        """The one check of a store's array (workers ask for it concurrently: made under the lock)."""
        key = (id(store), name)
        with self._cond:
            if key not in self._checks:
                self._checks[key] = RowCheck(store, name)
            return self._checks[key]

    def reset_turns(self) -> None:
        """Block numbers start again at 0 (a new pass over other rows)."""
        with self._cond:
            self._turns = {}
            self._aborted = False

    def abort(self) -> None:
        """A block failed: its turns will never come, so no worker may wait for them."""
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    def feed_in_turn(self, i: int, feeds: list[tuple[RowCheck, int, np.ndarray]]) -> None:
        by_check: dict[int, list] = {}
        for feed in feeds:  # the same array twice in a block (one store passed twice): one turn
            by_check.setdefault(id(feed[0]), []).append(feed)
        for key, mine in by_check.items():
            with self._cond:
                self._cond.wait_for(lambda: self._aborted or self._turns.get(key, 0) == i)
                if self._aborted:
                    return
            try:
                for check, start, rows in mine:  # this array's turn is ours alone: no lock held while hashing
                    check.feed(start, rows)
            finally:
                with self._cond:
                    self._turns[key] = i + 1
                    self._cond.notify_all()

    def finish(self) -> None:
        for check in self._checks.values():
            check.finish()


def check_opened(store) -> None:
    """What every command reads of a store besides its rows: the manifest
    against its content digest and request key, and the 1-D arrays (token
    ids and offsets, block starts) against their digests."""
    m = store.manifest
    derived = replace(m, digest="", request_key="").with_digests()
    if derived.request_key != m.request_key:
        raise StoreCorruptError(f"{store.path}: the manifest's request key does not match its request", hint=_HINT)
    if derived.digest != m.digest:
        raise StoreCorruptError(f"{store.path}: the manifest does not match its content digest", hint=_HINT)
    for name, info in m.arrays.items():
        if len(info.shape) != 1:
            continue
        if hash_array(store._read(name, slice(None))) != info.digest:
            raise StoreCorruptError(f"{store.path}: array {name!r} does not match its recorded digest", hint=_HINT)
