"""Stand-in for ``rebel.triton.language``: only what the plugin's kernel modules touch at import time.

The plugin imports its Triton kernels unconditionally
(``v1/attention/ops/triton_*_attention*.py:17-19``) and annotates their
parameters with ``tl.constexpr``; the kernels themselves run only with
``RBLN_USE_CUSTOM_KERNEL``, which this stand-in does not support.
"""

from . import extra  # noqa: F401


class constexpr:  # an annotation at import time, nothing more
    pass


def __getattr__(name):
    raise AttributeError(f"rebel.triton.language.{name} is not available in the CPU stand-in")
