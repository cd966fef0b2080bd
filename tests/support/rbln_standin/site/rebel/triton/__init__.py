"""Stand-in for ``rebel.triton`` (the NPU's Triton dialect): importable, never runnable.

vllm-rbln imports its rbln_triton_ops kernels unconditionally; they only run
with --rbln-use-custom-kernel, which this stand-in does not support.
"""
from . import language  # noqa: F401


class _Kernel:
    def __init__(self, fn):
        self.fn = fn
        self.__name__ = getattr(fn, "__name__", "kernel")

    def warmup(self, *args, **kwargs):
        raise RuntimeError(f"rebel.triton kernel {self.__name__} needs the NPU compiler (CPU stand-in)")

    def __getitem__(self, grid):
        return self.warmup


def jit(fn=None, **kwargs):
    if fn is None:
        return lambda f: _Kernel(f)
    return _Kernel(fn)
