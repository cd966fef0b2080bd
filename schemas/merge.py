"""Merging the shares of a sharded recording into one store (SPEC.md, "Shares").

The shares must name one request, hold every sequence of it exactly once and
agree on everything a store's content digest covers but their sequences and
rows. The merged store is written like any store (packed, under a temporary
name, renamed into place when complete); every row is checked against its
share's block digest on the way, so a share damaged in transit is refused,
never merged. Its content digest is the one a single recording of the same
values has: digests leave out layout and circumstances (``digest.content_view``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from parity.errors import IncompatibleStoresError, StoreCorruptError, UsageError

from .digest import ArrayHasher, content_view
from .layout import ROW_KINDS, row_array_names
from .manifest import Manifest
from .reader import Store, stores_in
from .streamcheck import check_opened
from .writer import StoreWriter

log = logging.getLogger("parity")

# Rows are copied in pieces of about this many bytes: a long prompt's block of
# a 128k vocabulary is half a gigabyte.
MERGE_PIECE_BYTES = 32 << 20

# What shares may differ in besides their sequences and rows: what the content
# digest leaves out anyway, and what only describes the share.
_PER_SHARE = ("sequences", "arrays", "positions", "share")


@dataclass(frozen=True)
class MergeResult:
    path: Path
    manifest: Manifest
    shares: tuple[Path, ...]


def open_shares(paths: "list[Path | str]", *, fast_read: bool = True) -> list[Store]:
    """The shares named by ``paths`` (stores or directories of them), checked to make one recording.

    Refused with one line: a complete store among them, shares of different
    requests or settings, a share missing or given twice, a sequence in two
    shares or in none.
    """
    found = stores_in(list(paths))
    shares = []
    for p in found:
        store = Store.open(p, fast_read=fast_read, partial=True)
        if store.manifest.share is None:
            raise UsageError(f"{p} is a complete store, not a share of a sharded recording",
                             hint="pass the stores `parity record --shard I/N` wrote")
        check_opened(store)
        shares.append(store)
    shares.sort(key=lambda s: s.manifest.share.index)
    _check_agree(shares)
    _check_cover(shares)
    return shares


def _check_agree(shares: list[Store]) -> None:
    first = shares[0]
    count = first.manifest.share.count
    by_index: dict[int, Store] = {}
    for s in shares:
        m = s.manifest
        if m.share.count != count:
            raise IncompatibleStoresError(
                f"{s.path} is share {m.share} but {first.path} is share {first.manifest.share}: "
                "shares of one recording have one count", hint=_SAME_RUN)
        if m.share.index in by_index:
            raise UsageError(f"share {m.share} is given twice: {by_index[m.share.index].path} and {s.path}",
                             hint="pass each share once")
        by_index[m.share.index] = s
        if m.request_key != first.manifest.request_key:
            raise IncompatibleStoresError(
                f"{s.path} records request {m.request_key}, {first.path} request {first.manifest.request_key}: "
                "not shares of one recording", hint=_SAME_RUN)
        where = _first_difference(_shared_part(first.manifest), _shared_part(m))
        if where is not None:
            path, a, b = where
            raise IncompatibleStoresError(
                f"shares {first.manifest.share} and {m.share} differ in {path} ({_short(a)} against {_short(b)})",
                hint=_SAME_RUN)
    missing = [i for i in range(1, count + 1) if i not in by_index]
    if missing:
        raise UsageError(f"share {missing[0]}/{count} is missing ({len(by_index)} of {count} shares given)",
                         hint="pass every share of the recording")


_SAME_RUN = "merge the shares of one `parity record --shard I/N` run, recorded with the same options and versions"


def _shared_part(m: Manifest) -> dict:
    """What every share of one recording has in common: its content view less its sequences and rows."""
    view = content_view(m.to_dict(with_digest=False))
    return {k: v for k, v in view.items() if k not in _PER_SHARE}


def _first_difference(a, b, path: str = ""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{path}.{k}".lstrip("."), a.get(k, "(absent)"), b.get(k, "(absent)")
            found = _first_difference(a[k], b[k], f"{path}.{k}")
            if found:
                return found
        return None
    return None if a == b else (path.lstrip(".") or "the manifest", a, b)


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_cover(shares: list[Store]) -> None:
    total = len(shares[0].manifest.request.prompts)
    owner: dict[int, Store] = {}
    for s in shares:
        for seq in s.manifest.sequences:
            if seq.index in owner:
                raise IncompatibleStoresError(
                    f"sequence {seq.index} is in share {owner[seq.index].manifest.share} and in share "
                    f"{s.manifest.share}", hint=_SAME_RUN)
            owner[seq.index] = s
    missing = [i for i in range(total) if i not in owner]
    if missing:
        raise IncompatibleStoresError(
            f"no share holds sequence {missing[0]} ({len(missing)} of the request's {total} sequences are in none)",
            hint=_SAME_RUN)


def merge_shares(paths: "list[Path | str]", out: Path | str | None = None, *, fast_read: bool = True,
                 direct_io: bool = True, timings: dict | None = None,
                 progress: Callable[[int, int], None] | None = None) -> MergeResult:
    """Merges the shares of one recording into a complete store in ``out`` (default: beside the first share).

    ``timings``: the merged run's ``run.timings`` (a driver that ran the
    shares in parallel knows the wall time); by default the shares' engine
    times are summed. ``progress(rows copied, rows in all)``.
    """
    shares = open_shares(paths, fast_read=fast_read)
    first = shares[0].manifest
    out_dir = Path(out).expanduser() if out is not None else shares[0].path.parent
    located = sorted(((seq.index, s, k) for s in shares for k, seq in enumerate(s.manifest.sequences)),
                     key=lambda t: t[0])
    for s in shares:
        s.skip_row_crcs([n for n in s.manifest.arrays if len(s.manifest.arrays[n].shape) == 2])
    total_rows = sum(s.manifest.generated_positions + s.manifest.prompt_positions for s in shares)
    done = 0
    writer = StoreWriter(out_dir, vocab_size=first.vocab_size, topn=first.request.logprobs if first.request.logprobs > 0
                         else None, direct_io=direct_io)
    try:
        token_ids = []
        for seq, store, k in located:
            for kind in ROW_KINDS:
                done += _copy_block(store, k, kind, seq, writer)
                if progress:
                    progress(done, total_rows)
            token_ids.append([int(t) for t in store.tokens(k)])
        manifest = _merged_manifest(shares, [s.manifest.sequences[k] for _, s, k in located], timings)
        path, manifest = writer.commit(manifest, token_ids)
    except BaseException:
        writer.abort()
        raise
    log.info("merged %d shares into %s", len(shares), path)
    return MergeResult(path, manifest, tuple(s.path for s in shares))


def _copy_block(store: Store, k: int, kind: str, seq: int, writer: StoreWriter) -> int:
    """Copies sequence ``k`` of a share's ``kind`` rows to sequence ``seq`` of the writer, checking its digest."""
    values_name, ids_name = row_array_names(kind)
    m = store.manifest
    starts, counts = store._blocks(kind)
    start, n = int(starts[k]), counts[k]
    names = [values_name] + ([ids_name] if ids_name in m.arrays else [])
    width = m.arrays[values_name].shape[1]
    step = max(MERGE_PIECE_BYTES // (4 * width), 1)
    hashers = {name: ArrayHasher(np.dtype(m.arrays[name].dtype)) for name in names}
    for a in range(start, start + n, step):
        b = min(a + step, start + n)
        pieces = {name: store.rows(kind, a, b, ids=name == ids_name) for name in names}
        for name, rows in pieces.items():
            hashers[name].update(rows)
        writer.append_rows(kind, seq, pieces[values_name], pieces.get(ids_name))
    for name in names:
        want = m.arrays[name].blocks[k]
        if hashers[name].hexdigest((n, width)) != want:
            raise StoreCorruptError(f"{store.path}: array {name!r}, sequence {m.sequences[k].index}: does not match "
                                    "its recorded digest", hint="the share is damaged: record it again")
    return n


def _merged_manifest(shares: list[Store], sequences: list, timings: dict | None) -> Manifest:
    first = shares[0].manifest
    run = {k: v for k, v in first.run.items() if k not in ("timings", "shares")}
    run["shares"] = [{
        "index": s.manifest.share.index,
        "sequences": [seq.index for seq in s.manifest.sequences],
        "created_at": s.manifest.created_at,
        "host": s.manifest.device.host,
        "env": s.manifest.device.env,
        "timings": s.manifest.run.get("timings"),
    } for s in shares]
    run["timings"] = timings if timings is not None else _summed_timings(shares, sequences)
    return replace(first, sequences=tuple(sequences), arrays={}, share=None, floor=None, digest="", request_key="",
                   created_at=max(s.manifest.created_at for s in shares), run=run)


def _summed_timings(shares: list[Store], sequences: list) -> dict:
    """The shares' engine times added up: what one engine would have taken, roughly."""
    def total(key: str):
        values = [(s.manifest.run.get("timings") or {}).get(key) for s in shares]
        return round(sum(values), 3) if all(isinstance(v, (int, float)) for v in values) else None

    generate = total("generate_s")
    generated = sum(seq.generated_len for seq in sequences)
    return {"engine_start_s": total("engine_start_s"), "generate_s": generate,
            "generated_tokens_per_s": round(generated / generate, 2) if generate else None,
            "summed_over_shares": len(shares)}
