"""Stand-in for ``rebel.compile_context`` (``v1/spec_decode/medusa.py:32`` imports it from here)."""

from . import CompileContext  # noqa: F401
