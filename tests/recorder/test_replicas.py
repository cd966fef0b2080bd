"""How `record --replicas` splits a host's CPUs and a Ray cluster's nodes, and carries shares back.

No engine here (tests/recorder/test_shards_engine.py runs replicas for real);
shares are real stores written by the StoreWriter.
"""

from __future__ import annotations

import io
import tarfile

import pytest

from parity.errors import EngineError, UsageError
from parity.recorder import RecordConfig
from parity.recorder.devices.cpu import _parse_cpu_list, cpu_groups, cpu_list, threads_bind
from parity.recorder.replicas import check_replica_options, local_replicas
from parity.recorder.replicas_ray import _pack, _place, _unpack
from parity.schemas.manifest import Share
from parity.schemas.merge import merge_shares
from tests.support.stores import write_share


def test_replicas_get_a_numa_node_each_when_there_are_enough():
    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert cpu_groups(2, list(range(8)), nodes) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # Only the CPUs this process may use, within each node.
    assert cpu_groups(2, [1, 2, 5], nodes) == [[1, 2], [5]]


def test_replicas_split_the_cpus_in_node_order_otherwise():
    nodes = {0: [0, 1, 2, 3], 1: [4, 5, 6, 7]}
    assert cpu_groups(3, list(range(8)), nodes) == [[0, 1, 2], [3, 4, 5], [6, 7]]
    assert cpu_groups(2, [0, 1], {0: [0, 1]}) == [[0], [1]]
    assert cpu_groups(3, [0, 1], {0: [0, 1]}) is None  # fewer CPUs than replicas: nothing bound
    # The rule --tp applies to its workers is the same one.
    assert threads_bind(3, list(range(8)), nodes) == "0,1,2|3,4,5|6,7"


def test_cpu_lists_are_written_as_linux_writes_them():
    for cpus in ([0], [0, 1, 2, 3], [0, 2, 3, 4, 9], [5, 7]):
        assert _parse_cpu_list(cpu_list(cpus)) == cpus
    assert cpu_list([3, 0, 1, 2, 8]) == "0-3,8"


def test_a_binding_given_by_the_user_is_one_list_per_replica(monkeypatch):
    cfg = RecordConfig()
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0-1|2-3")
    check_replica_options(cfg, 2, None)
    assert [r.cpus for r in local_replicas(2)] == [(0, 1), (2, 3)]
    with pytest.raises(UsageError, match="must give one CPU list per replica"):
        check_replica_options(cfg, 3, None)


def test_replicas_refuse_what_they_cannot_run():
    with pytest.raises(UsageError, match="not --device rbln"):
        check_replica_options(RecordConfig(device="rbln"), 2, None)
    with pytest.raises(UsageError, match="--shard records one share"):
        check_replica_options(RecordConfig(shard=Share(1, 2)), 2, None)
    with pytest.raises(UsageError, match="--ray-address runs the replicas on a Ray cluster"):
        check_replica_options(RecordConfig(), 1, "127.0.0.1:6379")


def _node(node_id: str, cpus: float, alive: bool = True) -> dict:
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": cpus}}


def test_ray_replicas_spread_over_nodes_by_their_cpus():
    nodes = [_node("small", 4), _node("big", 8), _node("dead", 64, alive=False)]
    placed = _place(nodes, 3)
    assert sorted((node, slot, per_node, cpus) for node, slot, per_node, cpus in placed) == [
        ("big", 0, 2, 4), ("big", 1, 2, 4), ("small", 0, 1, 4)]
    assert [p[0] for p in _place([_node("one", 2)], 2)] == ["one", "one"]
    with pytest.raises(EngineError, match="no alive node with a CPU"):
        _place([_node("gone", 8, alive=False)], 2)


def test_shares_returned_as_files_merge_like_shares_on_disk(tmp_path):
    """A Ray worker that does not see the driver's directory returns its share as a tar of its files."""
    _, single = write_share(tmp_path / "single")
    a, _ = write_share(tmp_path / "worker-a", (0, 2), Share(1, 2))
    b, _ = write_share(tmp_path / "worker-b", (1,), Share(2, 2))
    work = tmp_path / "work"
    work.mkdir()
    unpacked = [_unpack(_pack(p), work) for p in (a, b)]
    assert [p.name for p in unpacked] == [a.name, b.name]
    assert merge_shares(unpacked, tmp_path / "merged").manifest.digest == single.digest


def test_a_returned_share_cannot_write_outside_its_directory(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(EngineError, match="cannot be unpacked"):
        _unpack(buf.getvalue(), work)
    assert not (tmp_path / "escaped").exists()


def test_a_replicas_error_reaches_the_driver_as_its_own_class(tmp_path):
    """What a replica process sends when its recording fails, and what the driver raises of it."""
    import queue

    from parity.errors import ModelNotFoundError
    from parity.recorder.replica import Replica, replica_error
    from parity.recorder.replicas import _replica_main

    messages = queue.Queue()
    replica = Replica(Share(2, 2), None)
    _replica_main(RecordConfig(model=str(tmp_path / "no-such-model"), out=tmp_path / "out", shard=Share(2, 2)),
                  replica, messages)
    kind, index, name, message, hint = messages.get_nowait()
    assert (kind, index, name) == ("error", 2, "ModelNotFoundError")
    error = replica_error(replica, name, message, hint)
    assert isinstance(error, ModelNotFoundError)
    assert error.one_line().startswith("replica 2/2 on unbound threads: ") and "no-such-model" in error.one_line()
