"""The recorder's handle on the row sink, wherever the sink lives.

``LocalRows``: the sink is in this process (hf device, public fallback).
``EngineRows``: the sink is in the engine's output worker, reached through
``LLM.collective_rpc`` (for the in-process engine that "worker" is this
process, so both engines go through one code path). Either way the recorder
asks for the same three things: statistics for the manifest, commit, abort.
"""

from __future__ import annotations

import logging
import os
import _thread
import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Callable

from parity.errors import EngineError
from parity.schemas import Manifest
from parity.schemas.layout import TMP_PREFIX

from .sink import Progress, RowSink, SinkStats, read_progress

log = logging.getLogger("parity")

# How long an abort may wait for the workers before the temporary store is
# removed from here anyway (a crashed worker never answers).
ABORT_TIMEOUT_S = 10.0
PROGRESS_POLL_S = 0.2


class LocalRows:
    def __init__(self, sink: RowSink):
        self.sink = sink
        self.prompt_hooked = False

    def stats(self) -> SinkStats:
        return self.sink.stats()

    def commit(self, manifest: Manifest, token_ids: list[list[int]]) -> tuple[Path, Manifest]:
        return self.sink.commit(manifest, token_ids)

    def abort(self) -> None:
        self.sink.abort()

    def watch(self, progress, total: int):
        return contextlib.nullcontext()


class EngineRows:
    """The sink opened by ``capture.configure`` in the engine's output worker."""

    def __init__(self, llm, info: dict):
        self.llm = llm
        self.info = info
        self.prompt_hooked = bool(info.get("prompt_hooked"))

    @classmethod
    def open(cls, llm, spec, forced: dict[int, list[int]], topn: int | None, prompt_rows: bool) -> "EngineRows":
        from . import capture

        answers = _answers(llm.collective_rpc(capture.configure,
                                              args=(spec, forced, topn, prompt_rows, os.getpid())))
        _raise_parity_error(answers)
        if len(answers) != 1:
            # Every worker answered "not the output rank" (or several did): rows would be lost or doubled.
            _call_all(llm, capture.abort)
            raise EngineError(f"expected one output worker to hold the store writer, found {len(answers)}")
        return cls(llm, answers[0])

    def stats(self) -> SinkStats:
        from . import capture

        return self._one(capture.sink_stats)

    def prompt_rows_ok(self) -> bool:
        from . import capture

        return bool(self._one(capture.prompt_rows_ok))

    def commit(self, manifest: Manifest, token_ids: list[list[int]]) -> tuple[Path, Manifest]:
        from . import capture

        path, final = self._one(capture.commit, manifest, token_ids)
        return Path(path), final

    def abort(self) -> None:
        from . import capture

        try:
            _call_all(self.llm, capture.abort, timeout=ABORT_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001 - a dead engine cannot answer; clean up from here
            log.debug("abort on the workers failed: %s", e)
        finally:
            tmp = Path(self.info["tmp"])
            # Only a temporary store: never anything that could be a published one.
            if tmp.name.startswith(TMP_PREFIX) and tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def watch(self, progress: Callable[[Progress], None] | None, total: int):
        """Relays a worker's progress file to ``progress`` while the engine generates."""
        path = self.info.get("progress_file")
        if progress is None or not path:
            return contextlib.nullcontext()
        return _ProgressWatch(Path(path), progress, total)

    def _one(self, fn, *args):
        answers = _answers(self.llm.collective_rpc(fn, args=args))
        _raise_parity_error(answers)
        if len(answers) != 1:
            raise EngineError(f"expected one answer from the output worker, got {len(answers)}")
        return answers[0]


def _answers(results) -> list:
    return [r for r in results if r is not None]


def _raise_parity_error(answers: list) -> None:
    from parity import errors

    from .capture import PARITY_ERROR

    for answer in answers:
        if isinstance(answer, dict) and PARITY_ERROR in answer:
            cls = getattr(errors, answer[PARITY_ERROR], None)
            if not (isinstance(cls, type) and issubclass(cls, errors.ParityError)):
                cls = EngineError
            raise cls(answer["message"], hint=answer.get("hint"))


def _call_all(llm, fn, timeout: float | None = None) -> None:
    llm.collective_rpc(fn, timeout=timeout)


class _ProgressWatch:
    def __init__(self, path: Path, progress: Callable[[Progress], None], total: int):
        self.path, self.progress, self.total = path, progress, total
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="parity-progress", daemon=True)
        self.started = time.perf_counter()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        if self.error is None:
            self._poll()
        if self.error is not None:
            # The callback's own exception (e.g. KeyboardInterrupt), not the interrupt that delivered it.
            raise self.error

    def _run(self) -> None:
        while not self.stop.wait(PROGRESS_POLL_S):
            try:
                self._poll()
            except BaseException as e:  # noqa: BLE001 - handed to the recording thread
                self.error = e
                # The recording thread is inside the engine's generate(): interrupt it there.
                _thread.interrupt_main()
                return

    def _poll(self) -> None:
        got = read_progress(self.path)
        if got is not None:
            positions, written = got
            self.progress(Progress(positions, self.total, written, time.perf_counter() - self.started))
