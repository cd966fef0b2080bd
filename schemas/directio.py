"""Writing a shard file without the page cache (``O_DIRECT``), where the file system allows it.

A recording at Llama 3's vocabulary writes about 400 KB of compressed rows per
generated token. Through the page cache every 4 KiB of that costs the kernel
a page allocation and its accounting, on the same two cores the engine runs
on: in ``bench/record_overhead.py --breakdown`` the file write was the
writer's largest cost (hundreds of microseconds of CPU per row), more than
Blosc. With ``O_DIRECT`` the device reads the bytes from our buffer: tens of
microseconds per row, and the writer thread waits on the device instead of
taking CPU from the engine.

``O_DIRECT`` wants the buffer's address, the file offset and the length
aligned to the device's logical block (4096 covers every common device). So
the parts are copied into a page-aligned staging buffer and written in
aligned pieces; the last piece's unaligned tail goes through an ordinary
write. File systems that refuse ``O_DIRECT`` (tmpfs, some network and FUSE
file systems) answer ``EINVAL``: the file is then written the ordinary way,
and so are the directory's later files. The bytes on disk are the same either
way; only the page cache differs (a store just recorded is read back from
the device, not from memory).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from pathlib import Path

ALIGN = 4096
STAGING_BYTES = 4 << 20  # per writing thread
O_DIRECT = getattr(os, "O_DIRECT", 0)


class _Staging(threading.local):
    def __init__(self):
        self.buffer: mmap.mmap | None = None

    def get(self) -> mmap.mmap:
        if self.buffer is None or len(self.buffer) < STAGING_BYTES:
            self.buffer = mmap.mmap(-1, STAGING_BYTES)  # page-aligned, as O_DIRECT needs
        return self.buffer


_staging = _Staging()


def write_buffered(path: Path, parts: list[bytes]) -> None:
    with open(path, "wb") as f:
        f.writelines(parts)


def write_direct(path: Path, parts: list[bytes]) -> bool:
    """Writes the concatenated parts to a new file at ``path`` with O_DIRECT.

    Returns False, having written nothing, when the file system refuses
    O_DIRECT (the caller then writes the ordinary way).
    """
    if not O_DIRECT:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_DIRECT, 0o644)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    try:
        written, tail = _stream(fd, parts)
    except OSError as e:
        os.close(fd)
        if e.errno == errno.EINVAL:  # accepted at open, refused at write
            os.unlink(path)
            return False
        raise
    os.close(fd)
    if tail:
        fd = os.open(path, os.O_WRONLY)
        try:
            _write_all(fd, tail, written)
        finally:
            os.close(fd)
    return True


def _stream(fd: int, parts: list[bytes]) -> tuple[int, bytes]:
    """Writes whole aligned pieces through the staging buffer; returns (bytes written, unaligned tail)."""
    staging = _staging.get()
    view = memoryview(staging)
    filled = written = 0
    try:
        for part in parts:
            part = memoryview(part).cast("B")
            while len(part):
                take = min(len(part), STAGING_BYTES - filled)
                view[filled : filled + take] = part[:take]
                filled += take
                part = part[take:]
                if filled == STAGING_BYTES:
                    _write_all(fd, view[:filled], written)
                    written += filled
                    filled = 0
        whole = filled - filled % ALIGN
        if whole:
            _write_all(fd, view[:whole], written)
            written += whole
        return written, bytes(view[whole:filled])
    finally:
        view.release()


def _write_all(fd: int, data, offset: int) -> None:
    data = memoryview(data)
    while len(data):
        n = os.pwrite(fd, data, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        data, offset = data[n:], offset + n
