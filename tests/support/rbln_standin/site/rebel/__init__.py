"""CPU stand-in for rebel-compiler, the Rebellions NPU compiler and runtime (tests only).

rebel-compiler is not on PyPI and needs an NPU. This package replaces it, and
only it, so that vllm-rbln 0.12's own platform, worker, model runner,
scheduler, warm-up and sampler run on a CPU (``tests/recorder/test_rbln_e2e.py``).
It does what the hardware side does and nothing more:

- NPU queries: ``get_npu_name`` (``platform/__init__.py:141``; default
  ``RBLN-CR03``, ``RBLN_STANDIN_NPU_NAME`` to change; ``""`` for none) and
  ``manual_seed`` (``platform/__init__.py:169``);
- ``CompileContext`` (``compilation/compiler.py:22``): keeps the options and the
  static (device-resident) KV-cache addresses the plugin marks;
- the ``torch.compile`` backend (``core/torch_compile.py``): runs the graph
  Dynamo traced, eagerly on the CPU, with the plugin's meta-device KV cache
  backed by host memory;
- the torch ops the compiler registers for traced graphs (``_ops.py``):
  ``rbln::argmax``, ``rbln::top_k_top_p`` and the paged causal-attention ops;
- small runtime modules the plugin imports (``flags``, ``profiler``,
  ``core.mega_cache``, ``triton``, ``kv_cache``, ``compile_context``, ``ops``).

``torch.rbln`` (torch-rbln's device module) is stood in by ``_torch_rbln.py``,
hooked by ``sitecustomize.py`` beside this package. A store recorded here says
so: the ``rebel-compiler`` distribution beside this package has version
``0.0.0+cpu.standin``, which the recorder writes into the manifest.
"""

import os

__version__ = "0.0.0+cpu.standin"
__standin__ = True


def get_npu_name(device_id=0):
    return os.environ.get("RBLN_STANDIN_NPU_NAME", "RBLN-CR03") or None


def manual_seed(seed):
    return None


class CompileContext:
    def __init__(self, **options):
        self.options = options
        self.static_addresses = {}

    def mark_static_address(self, tensor, name):
        self.static_addresses[name] = tensor


def compile(*args, dtype=None, **kwargs):
    # ``dtype`` in the signature: compilation/compiler.py:48-54 checks for it.
    raise RuntimeError("rebel.compile is not available: CPU stand-in for the NPU compiler")


from . import flags, profiler  # noqa: E402,F401
from . import _ops  # noqa: E402,F401  (registers the compiler's torch ops)
