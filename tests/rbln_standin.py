"""A stand-in for the Rebellions NPU compiler only, so vllm-rbln's sampler runs on CPU.

This stands in for ``rebel-compiler`` (the NPU compiler and runtime, which is
not on PyPI and needs an NPU) and for nothing else. What it provides:

- modules ``rebel``, ``rebel.core`` and ``rebel.core.torch_compile`` with just
  the names vllm-rbln 0.12's sampler imports: ``CompileContext`` (holds its
  options), ``rbln_backend`` (the ``torch.compile`` backend: it returns the
  graph Dynamo traced, unchanged, so the "compiled" function runs those same
  torch ops eagerly on the CPU), and ``compile``/``manual_seed``/
  ``get_npu_name`` that refuse or do nothing;
- the custom op ``rbln::argmax`` that the NPU compiler registers, defined here
  as ``argmax(-1).view(-1)`` (what the plugin expects it to compute).

Everything else that runs -- vllm-rbln's ``RBLNSampler``, its logits
processors, vLLM's sampler base class, Dynamo's tracing of the sampling
function -- is the real code. What this cannot test: the NPU's own compiled
argmax, the ``rbln`` torch device (logits here are CPU tensors), and the
runtime's buffer recycling.

``install()`` must run before anything imports vLLM: it sets
``VLLM_PLUGINS=none`` (vLLM must not load the rbln platform plugin) and
``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (a torch-rbln, if present, would need
``librbln.so``).
"""

from __future__ import annotations

import os
import sys
import types

# Graphs handed to the stand-in backend, newest last: lets a test check that
# the plugin's compiled path (and not some fallback) produced the result.
COMPILED_GRAPHS: list = []


class CompileContext:
    """Stand-in for ``rebel.CompileContext``: keeps its options, does nothing."""

    def __init__(self, **options):
        self.options = options


def rbln_backend(graph_module, example_inputs, **kwargs):
    """Stand-in for ``rebel.core.torch_compile.rbln_backend``: no compilation, the traced graph runs as is."""
    COMPILED_GRAPHS.append(graph_module)
    return graph_module.forward


def _refuse_compile(*args, **kwargs):
    raise RuntimeError("rebel.compile is not available: this is the CPU stand-in for the NPU compiler")


def _register_argmax() -> None:
    import torch

    if hasattr(torch.ops, "rbln") and hasattr(torch.ops.rbln, "argmax"):
        return

    # torch is imported here, after install() set TORCH_DEVICE_BACKEND_AUTOLOAD; the
    # schema is spelled out because this module's annotations are strings.
    @torch.library.custom_op("rbln::argmax", mutates_args=(), schema="(Tensor logits) -> Tensor")
    def argmax(logits):
        return logits.argmax(dim=-1).view(-1)

    @argmax.register_fake
    def _(logits):
        return logits.new_empty((logits.shape[:-1].numel(),), dtype=torch.long)


def install() -> None:
    """Sets the environment and puts the stand-in modules in ``sys.modules`` (idempotent)."""
    os.environ["VLLM_PLUGINS"] = "none"
    os.environ["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    if getattr(sys.modules.get("rebel"), "__standin__", False):
        _register_argmax()
        return
    rebel = types.ModuleType("rebel")
    rebel.__doc__ = "CPU stand-in for the Rebellions NPU compiler (tests only)."
    rebel.__standin__ = True
    rebel.__version__ = "0.0.0+cpu-standin"
    rebel.CompileContext = CompileContext
    rebel.compile = _refuse_compile
    rebel.manual_seed = lambda seed: None
    rebel.get_npu_name = lambda device_id=0: None
    core = types.ModuleType("rebel.core")
    torch_compile = types.ModuleType("rebel.core.torch_compile")
    torch_compile.rbln_backend = rbln_backend
    rebel.core = core
    core.torch_compile = torch_compile
    sys.modules.update({"rebel": rebel, "rebel.core": core, "rebel.core.torch_compile": torch_compile})
    _register_argmax()
