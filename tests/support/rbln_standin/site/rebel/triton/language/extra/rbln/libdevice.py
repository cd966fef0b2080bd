"""Stand-in for the NPU's Triton device library: importable, every name refused (kernels never run here)."""


def __getattr__(name):
    raise AttributeError(f"rebel.triton...libdevice.{name} is not available in the CPU stand-in")
