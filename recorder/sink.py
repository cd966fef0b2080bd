"""Where captured rows go: a row sink that owns the store writer.

The sink lives in the process whose sampler produces the rows: the recorder's
own process for the in-process engine, the hf device and the public fallback;
the output worker (first tensor-parallel rank of the last pipeline stage) for
multi-process and Ray executors. Rows therefore reach the writer as the numpy
arrays the capture made, never as per-entry Python objects, and never cross a
process boundary. Nothing here imports torch or vllm.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from parity.schemas import GENERATED, PROMPT, Manifest, StoreWriter
from parity.settings import settings

PROGRESS_INTERVAL_S = 0.1
# A worker's progress, for a recorder in another process: two little-endian
# int64 (positions, bytes written), rewritten in place.
PROGRESS_FILE = "progress"
_PROGRESS = struct.Struct("<qq")


@dataclass(frozen=True)
class Progress:
    positions: int
    total: int
    bytes_written: int
    elapsed: float


@dataclass(frozen=True)
class WriterSpec:
    """Everything a process needs to open the store writer (picklable: it crosses to workers)."""

    out: str
    vocab_size: int
    topn: int | None
    num_seqs: int
    total: int
    reserve: dict | None = None
    lanes: int = 1


@dataclass(frozen=True)
class SinkStats:
    """What the recorder needs from the sink to write the manifest."""

    nan_rows: list[int]
    inf_rows: list[int]
    positions: int
    bytes_written: int
    error: str | None


class RowSink:
    """Receives rows from the sampler and appends them to the writer in order."""

    def __init__(self, spec: WriterSpec, progress: Callable[[Progress], None] | None = None):
        self.writer = StoreWriter(spec.out, vocab_size=spec.vocab_size, topn=spec.topn,
                                  reserve=spec.reserve, lanes=spec.lanes, direct_io=settings().direct_io)
        self.topn = spec.topn
        self.next_generated = [0] * spec.num_seqs
        self.next_prompt = [0] * spec.num_seqs
        # Rows each sequence will get (aligned layout): reaching them is its end,
        # whatever the engine says of its comings and goings in the batch.
        self.planned = {kind: list(counts) for kind, counts in (spec.reserve or {}).items()}
        self.nan_rows = [0] * spec.num_seqs
        self.inf_rows = [0] * spec.num_seqs
        self.positions = 0
        self.total = spec.total
        self.progress = progress
        self.started = time.perf_counter()
        self.last_report = 0.0
        self.error: str | None = None
        self._progress_fd: int | None = None

    @property
    def tmp(self) -> Path:
        return self.writer.tmp

    def report_to_file(self) -> Path:
        """Progress goes to a small file in the store's temporary directory (read by another process)."""
        path = self.writer.tmp / PROGRESS_FILE
        self._progress_fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        os.pwrite(self._progress_fd, _PROGRESS.pack(0, 0), 0)
        return path

    def append(self, kind: str, seq: int, values: np.ndarray, ids: np.ndarray | None = None) -> None:
        """Rows of one sequence at once (the public fallback path)."""
        self.writer.append_rows(kind, seq, values, ids)
        self._count([seq] * len(values), values)

    def _count(self, seqs: list[int], values: np.ndarray) -> None:
        # One pass: a row's sum is finite exactly when every entry is; only
        # rows that fail (-inf entries, or NaN/+inf) are inspected further.
        with np.errstate(invalid="ignore", over="ignore"):
            suspect = np.flatnonzero(~np.isfinite(values.sum(axis=1)))
        for k in suspect:
            seq = seqs[k]
            self.nan_rows[seq] += bool(np.isnan(values[k]).any())
            self.inf_rows[seq] += bool(np.isposinf(values[k]).any())
        self.positions += values.shape[0]
        now = time.perf_counter()
        if now - self.last_report >= PROGRESS_INTERVAL_S or self.positions >= self.total:
            self.last_report = now
            if self.progress:
                self.progress(Progress(self.positions, self.total, self.writer.bytes_written(), now - self.started))
            if self._progress_fd is not None:
                os.pwrite(self._progress_fd, _PROGRESS.pack(self.positions, self.writer.bytes_written()), 0)

    def generated(self, entries: list[tuple[int, int]], values: np.ndarray, ids: np.ndarray | None = None) -> None:
        """One decode step: row k of values (and ids) is position entries[k][1] of sequence entries[k][0]."""
        for k, (seq, position) in enumerate(entries):
            if position != self.next_generated[seq]:
                # A preempted or re-scheduled request: rows would be misaligned.
                self.error = f"sequence {seq}: got a row for generated position {position}, expected {self.next_generated[seq]}"
                return
            self.next_generated[seq] += 1
            self.writer.append_rows(GENERATED, seq, values[k], None if ids is None else ids[k])
            self._maybe_complete(GENERATED, seq, self.next_generated[seq])
        self._count([seq for seq, _ in entries], values)

    def finished(self, seq: int) -> None:
        """The engine ended this sequence (not a pause): no more rows of any kind will come."""
        self.writer.finish_sequence(seq)

    def _maybe_complete(self, kind: str, seq: int, rows: int) -> None:
        planned = self.planned.get(kind)
        if planned is not None and rows == planned[seq]:
            # Writes the sequence's last shard now and frees its buffer.
            self.writer.finish_sequence(seq, kind)

    def prompt(self, seq: int, start: int, rows: np.ndarray, ids: np.ndarray | None = None) -> None:
        if start != self.next_prompt[seq]:
            self.error = f"sequence {seq}: prompt rows from {start}, expected {self.next_prompt[seq]}"
            return
        self.next_prompt[seq] += rows.shape[0]
        self.writer.append_rows(PROMPT, seq, rows, ids)
        self._maybe_complete(PROMPT, seq, self.next_prompt[seq])
        self._count([seq] * rows.shape[0], rows)

    def stats(self) -> SinkStats:
        return SinkStats(list(self.nan_rows), list(self.inf_rows), self.positions, self.writer.bytes_written(),
                         self.error)

    def commit(self, manifest: Manifest, token_ids: list[list[int]]) -> tuple[Path, Manifest]:
        self._close_progress()
        (self.writer.tmp / PROGRESS_FILE).unlink(missing_ok=True)
        return self.writer.commit(manifest, token_ids)

    def abort(self) -> None:
        self._close_progress()
        if self.writer.committed is None:
            self.writer.abort()

    def _close_progress(self) -> None:
        if self._progress_fd is not None:
            os.close(self._progress_fd)
            self._progress_fd = None


def read_progress(path: Path) -> tuple[int, int] | None:
    """(positions, bytes written) from a worker's progress file, or None while it is not there."""
    try:
        with open(path, "rb") as f:
            data = f.read(_PROGRESS.size)
    except OSError:
        return None
    return _PROGRESS.unpack(data) if len(data) == _PROGRESS.size else None


def tensor_rows(logprobs, topn: int | None, *, copy: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """float32 log-prob rows of a torch tensor as numpy: full rows, or the top-N values and int32 ids.

    ``copy`` when the tensor goes back to the engine afterwards (prompt rows):
    on the CPU ``.cpu()`` would share its memory. Uses tensor methods only, so
    this module stays importable without torch.
    """
    if topn:
        values, ids = logprobs.topk(topn, dim=-1)
        return values.cpu().numpy(), ids.int().cpu().numpy()
    return logprobs.detach().to("cpu", copy=copy).numpy(), None
