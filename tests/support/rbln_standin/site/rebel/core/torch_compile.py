"""Stand-in for the NPU ``torch.compile`` backend: the traced graph runs eagerly on the CPU.

Replaces: ``rebel.core.torch_compile.rbln_backend``, which the plugin hands
to ``torch.compile`` (``compilation/backends.py:24``) and which, on an NPU
host, compiles the graph for the NPU and returns the runtime that executes it.
Here the runtime calls the graph Dynamo traced, op by op, on CPU tensors.

KV-cache semantics kept: with host logits the plugin allocates the KV cache on
the ``meta`` device (``v1/worker/rbln_model_runner.py:2883``: the NPU runtime
owns that memory) and marks it as a static address of the compile context
(``:3149``), so graphs receive meta tensors for it. Each meta storage a graph
sees, as an input or as a constant, is backed by one lazily committed
``MAP_NORESERVE`` host buffer, and views of one storage share it, as on the
device: the attention ops write the cache in place and the next step reads
what they wrote. The runtime is also appended to the options'
``_runtime_holder`` (``compilation/compiler.py:124``), as the real backend does.
"""
import mmap

import torch

COMPILED_GRAPHS = []
_HOST = {}  # meta storage id -> host int8 buffer
STATS = {"meta_inputs": 0, "meta_constants": 0}


def _host_view(t):
    st = t.untyped_storage()
    key = st._cdata
    buf = _HOST.get(key)
    if buf is None:
        nbytes = st.nbytes()
        m = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000)  # MAP_NORESERVE
        buf = torch.frombuffer(m, dtype=torch.uint8)
        _HOST[key] = buf
    return torch.empty(0, dtype=t.dtype).set_(buf.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def materialize(x):
    if isinstance(x, torch.Tensor) and x.is_meta:
        return _host_view(x)
    return x


class Runtime:
    def __init__(self, gm, options):
        self.gm, self.options, self.calls = gm, options, 0
        for name, value in list(vars(gm).items()):
            if isinstance(value, torch.Tensor) and value.is_meta:
                STATS["meta_constants"] += 1
                setattr(gm, name, _host_view(value))
        for mod in gm.modules():
            for pname, buf in list(mod._buffers.items()):
                if buf is not None and buf.is_meta:
                    STATS["meta_constants"] += 1
                    mod._buffers[pname] = _host_view(buf)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == 1:
            STATS["meta_inputs"] += sum(isinstance(a, torch.Tensor) and a.is_meta for a in args)
        args = [materialize(a) for a in args]
        return self.gm.forward(*args, **kwargs)


def rbln_backend(graph_module, example_inputs, **kwargs):
    options = dict(kwargs.get("options") or {})
    runtime = Runtime(graph_module, options)
    holder = options.get("_runtime_holder")
    if holder is not None:
        holder.append(runtime)
    COMPILED_GRAPHS.append(graph_module)
    return runtime
