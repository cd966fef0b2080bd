"""Stand-in for ``rebel.ops.torch_custom_ops``: importing it registers the attention ops, as the real one does."""

from . import attn  # noqa: F401
