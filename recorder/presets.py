"""Model presets: the legacy tool's table, plus the built-in tiny model."""

from __future__ import annotations

from dataclasses import dataclass

from .suites import load_suite


@dataclass(frozen=True)
class Preset:
    name: str
    model_id: str
    expert_parallel: bool = False
    note: str = ""


BUILTIN_TINY = "tiny"

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(BUILTIN_TINY, "built-in:tiny-llama", note="built locally, no download (the demo and tests use it)"),
        Preset("llama3.2-1b", "meta-llama/Llama-3.2-1B"),
        Preset("llama3-8b", "meta-llama/Meta-Llama-3-8B"),
        Preset("qwen3-1.7b", "Qwen/Qwen3-1.7B"),
        Preset("qwen1.5-moe-15b", "Qwen/Qwen1.5-MoE-A2.7B", expert_parallel=True),
        Preset("qwen3-moe-30b", "Qwen/Qwen3-30B-A3B", expert_parallel=True),
        Preset("qwen3-moe-235b", "Qwen/Qwen3-235B-A22B", expert_parallel=True),
        Preset("deepseek-v2", "deepseek-ai/DeepSeek-V2-Lite", expert_parallel=True),
        Preset("llama4-maverick", "meta-llama/Llama-4-Maverick-17B-128E", expert_parallel=True),
    )
}

# The legacy tool's 8 short prompts, now the "seed" prompt suite (recorder/suites/seed.json);
# the default prompts are the "default" suite. Kept under its old name for code that imports it.
DEFAULT_PROMPTS: tuple[str, ...] = tuple(load_suite("seed").texts)
