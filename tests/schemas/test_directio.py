"""Shard files written with O_DIRECT: the same bytes, and the ordinary way where refused."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from parity.schemas import Store, StoreWriter, directio
from parity.schemas import GENERATED

from tests.support.stores import deterministic_rows, write_deterministic


def takes_o_direct(directory: Path) -> bool:
    if not directio.O_DIRECT:
        return False
    probe = directory / ".probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | directio.O_DIRECT, 0o644)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return False
        raise
    os.close(fd)
    probe.unlink()
    return True


@pytest.fixture
def direct_dir(tmp_path):
    if not takes_o_direct(tmp_path):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    return tmp_path


@pytest.mark.parametrize("sizes", [
    [4096],                      # exactly one block, no tail
    [1, 4095, 4096, 3],          # tail of 3 bytes
    [20000, 7, 12288],           # parts crossing the staging buffer several times
    [8192 * 3 + 100],            # one part bigger than the staging buffer
    [5],                         # nothing aligned at all: all tail
    [],
])
def test_direct_write_gives_the_concatenated_bytes(direct_dir, monkeypatch, sizes):
    monkeypatch.setattr(directio, "STAGING_BYTES", 8192)
    rng = np.random.default_rng(len(sizes))
    parts = [rng.integers(0, 256, n, dtype=np.uint8).tobytes() for n in sizes]
    path = direct_dir / "shard"
    assert directio.write_direct(path, parts) is True
    assert path.read_bytes() == b"".join(parts)


def write_store(out: Path, direct_io: bool = True) -> tuple[Path, StoreWriter]:
    captured = []
    original = StoreWriter.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, direct_io=direct_io, **kwargs)
        captured.append(self)

    StoreWriter.__init__ = keep
    try:
        path, _ = write_deterministic(out)
    finally:
        StoreWriter.__init__ = original
    return path, captured[0]


def read_back(path: Path) -> None:
    store = Store.open(path)
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 0), deterministic_rows(3, 0))
    np.testing.assert_array_equal(store.sequence_rows(GENERATED, 1), deterministic_rows(2, 3))
    assert store.verify().digest == store.manifest.digest


def shard_bytes(path: Path) -> dict[str, bytes]:
    root = path / "logprobs"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_store_written_with_o_direct_is_byte_identical_to_the_page_cache_one(direct_dir, monkeypatch):
    direct_path, w = write_store(direct_dir / "direct")
    assert w.streams["logprobs"].files.direct is True
    cached_path, w = write_store(direct_dir / "cached", direct_io=False)
    assert w.streams["logprobs"].files.direct is False
    assert direct_path.name == cached_path.name  # same content digest
    assert shard_bytes(direct_path) == shard_bytes(cached_path)
    read_back(direct_path)


def test_a_file_system_refusing_o_direct_gets_ordinary_writes():
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or takes_o_direct(shm):
        pytest.skip("needs a writable tmpfs that refuses O_DIRECT")
    import tempfile
    import shutil

    work = Path(tempfile.mkdtemp(dir=shm, prefix="parity-test-"))
    try:
        assert directio.write_direct(work / "x", [b"abc"]) is False
        assert not (work / "x").exists()
        path, w = write_store(work)
        assert w.streams["logprobs"].files.direct is False
        read_back(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.parametrize("refused_at", ["open", "write"])
def test_o_direct_refused_falls_back_to_ordinary_writes(tmp_path, monkeypatch, refused_at):
    # Stands in for a file system without O_DIRECT (most answer EINVAL at
    # open, some only at the first write); everything else is real.
    real_open, real_stream = os.open, directio._stream

    def open_refusing(path, flags, *args, **kwargs):
        if flags & directio.O_DIRECT and refused_at == "open":
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args, **kwargs)

    def stream_refusing(fd, parts):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(directio, "O_DIRECT", directio.O_DIRECT or 0o40000)
    monkeypatch.setattr(directio.os, "open", open_refusing)
    if refused_at == "write":
        monkeypatch.setattr(directio, "_stream", stream_refusing)
    assert directio.write_direct(tmp_path / "x", [b"abc"]) is False
    assert not (tmp_path / "x").exists()
    monkeypatch.setattr(directio.os, "open", real_open if refused_at == "write" else open_refusing)
    path, w = write_store(tmp_path / "store")
    assert w.streams["logprobs"].files.direct is False
    monkeypatch.setattr(directio, "_stream", real_stream)
    read_back(path)
