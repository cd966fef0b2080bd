"""The one output sink of the CLI: results to stdout, progress and notes to stderr."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time


class Output:
    def __init__(self, *, json_mode: bool = False, progress: bool = True, color: bool | None = None):
        self.json_mode = json_mode
        self.is_tty = sys.stderr.isatty()
        self.progress_enabled = progress and not json_mode and self.is_tty
        self.color = sys.stdout.isatty() if color is None else color
        self._last_draw = 0.0
        self._drawn = False

    def result(self, text: str) -> None:
        print(text, file=sys.stdout, flush=True)

    def data(self, obj) -> None:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str), file=sys.stdout, flush=True)

    def note(self, text: str) -> None:
        self._clear()
        print(text, file=sys.stderr, flush=True)

    def error(self, text: str) -> None:
        self._clear()
        print(f"error: {text}", file=sys.stderr, flush=True)

    def bar(self, done: int, total: int, extra: str = "", *, force: bool = False) -> None:
        if not self.progress_enabled:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        width = 30
        frac = min(done / total, 1.0) if total else 0.0
        filled = int(frac * width)
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {extra}"
        sys.stderr.write(line[:200])
        sys.stderr.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._drawn = False

    def finish(self) -> None:
        self._clear()


@contextlib.contextmanager
def stdout_to_stderr():
    """Sends everything written to stdout (including by C extensions) to stderr.

    The engine logs to stdout; scripts rely on stdout carrying only results.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
