"""``parity ...`` with counters around the plugin's scheduler and parity's row sink (tests only).

Observes, changes nothing: the counts are written as JSON to the file named
by ``PARITY_TEST_TRACE`` when the process exits. They cover this process only
(the in-process engine; with ``--tp 2`` the rows are written in a worker).

- ``scheduler_steps``, ``evictions``: steps of vllm-rbln's ``RBLNScheduler``,
  and those that admitted a prefill while a decode batch was running, which
  takes the decode batch out of the step (``v1/core/rbln_scheduler.py:874-894``);
- ``finished_calls``: how often the sink was told each sequence ended, and
  ``rows_after_finished``: rows that arrived for a sequence after that;
- ``shard_rewrites``: shard writes that did not start a shard, which zarr
  merges into the shard already on disk (a read-modify-write);
- ``attention_calls``: calls of each of the stand-in's attention ops (which
  attention path the plugin chose: normal, or flash over several blocks).

Usage: python -m tests.support.rbln_traced_cli record --device rbln ...
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from collections import Counter


def _install(trace: dict) -> None:
    from parity.recorder.sink import RowSink
    from parity.schemas import shards as store

    finished: Counter = Counter()
    ended: set[int] = set()
    trace.update(finished_calls=finished, rows_after_finished=0, shard_rewrites=0, shard_writes=0)

    original_finished, original_generated = RowSink.finished, RowSink.generated

    def finished_(self, seq, *args, **kwargs):
        finished[seq] += 1
        ended.add(seq)
        return original_finished(self, seq, *args, **kwargs)

    def generated(self, entries, *args, **kwargs):
        trace["rows_after_finished"] += sum(seq in ended for seq, _ in entries)
        return original_generated(self, entries, *args, **kwargs)

    RowSink.finished, RowSink.generated = finished_, generated

    original_write = store._ShardFiles.write

    def write(self, first, block, shard_rows):
        trace["shard_writes"] += 1
        trace["shard_rewrites"] += bool(first % shard_rows)
        return original_write(self, first, block, shard_rows)

    store._ShardFiles.write = write

    try:
        from vllm_rbln.v1.core import rbln_scheduler
    except ImportError:  # not the rbln platform: nothing to count
        return
    trace.update(scheduler_steps=0, evictions=0)
    original_schedule = rbln_scheduler.RBLNScheduler.schedule

    def schedule(self, *args, **kwargs):
        running = [r.request_id for r in self.running]
        out = original_schedule(self, *args, **kwargs)
        trace["scheduler_steps"] += 1
        scheduled = set(out.num_scheduled_tokens)
        evicted = [r for r in running if r not in scheduled and r not in out.finished_req_ids]
        trace["evictions"] += bool(out.scheduled_new_reqs and evicted)
        return out

    rbln_scheduler.RBLNScheduler.schedule = schedule


def main() -> None:
    trace: dict = {}
    path = os.environ.get("PARITY_TEST_TRACE")
    if path:
        def dump() -> None:
            ops = sys.modules.get("rebel._ops")
            if ops is not None:
                trace["attention_calls"] = dict(ops.STATS)
            with open(path, "w") as f:
                json.dump({k: (dict(v) if isinstance(v, Counter) else v) for k, v in trace.items()}, f)

        atexit.register(dump)
    _install(trace)
    from parity.cli import main as parity_main

    sys.argv[0] = "parity"
    parity_main()


if __name__ == "__main__":
    main()
