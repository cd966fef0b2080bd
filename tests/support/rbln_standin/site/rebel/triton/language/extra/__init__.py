"""Stand-in for ``rebel.triton.language.extra`` (import chain of the plugin's Triton kernels)."""

from . import rbln  # noqa: F401
