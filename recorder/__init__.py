"""The recorder: runs a device through its engine (vLLM, or transformers for hf) and writes a parity store.

Importing this package is cheap; vllm and torch are imported when recording starts.
"""

from .devices import EngineOptions, get_profile
from .plan import RecordConfig
from .record import RecordResult, record
from .sink import Progress

__all__ = ["EngineOptions", "Progress", "RecordConfig", "RecordResult", "get_profile", "record"]
