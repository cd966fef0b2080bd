"""The recorder: runs a device through vLLM and writes a parity store.

Importing this package is cheap; vllm and torch are imported when recording starts.
"""

from .devices import EngineOptions, get_profile
from .record import Progress, RecordConfig, RecordResult, record

__all__ = ["EngineOptions", "Progress", "RecordConfig", "RecordResult", "get_profile", "record"]
