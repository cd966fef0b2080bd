"""Stand-in for ``rebel.triton.language.extra.rbln`` (import chain of the plugin's Triton kernels)."""

from . import libdevice  # noqa: F401
