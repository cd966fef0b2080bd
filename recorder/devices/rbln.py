"""vLLM on Rebellions NPUs through the vllm-rbln plugin (runs only on an NPU host).

Fitted to vllm-rbln 0.12.0 as its source reads (paths inside ``vllm_rbln/``;
vLLM paths are vLLM 0.30.0, which vllm-rbln 0.12 pins):

- Plugins: the wheel registers a platform plugin ``rbln`` and general plugins
  ``rbln_custom_ops``/``rbln_new_models`` (entry_points.txt). ``register_ops``
  (``__init__.py:39-58``) wraps ``EngineArgs.create_engine_config`` so the
  ``model_impl`` argument picks the model path
  (``platform/__init__.py:209-256``); vLLM loads only the plugins named in
  ``VLLM_PLUGINS`` when it is set (vLLM ``plugins/__init__.py:56-66``), so we
  never set it and refuse a value that leaves those two out.
- Model runner: vLLM 0.30 picks the V2 runner by default
  (vLLM ``config/vllm.py:674-723``); the plugin raises under V2
  (``platform/__init__.py:324-329``): ``VLLM_USE_V2_MODEL_RUNNER=0``
  (parsed with ``bool(int(...))``, vLLM ``envs.py:348-351``).
- Model path: ``model_impl="vllm"`` (vLLM's model code compiled by the plugin)
  or ``"optimum"`` (optimum-rbln) (``config.py:319-324``, ``:363-448``); the
  legacy ``VLLM_RBLN_USE_VLLM_MODEL`` is deprecated and refused when it
  disagrees (``config.py:408-426``). The vllm path is refused on RBLN-CA*
  (ATOM) NPUs (``config.py:327-353``); the NPU name is
  ``rebel.get_npu_name(0)``, else ``RBLN_FORCE_NPU_NAME``/``RBLN_TARGET_SOC``
  (``platform/__init__.py:136-161``). ``--rbln-path auto`` takes optimum on
  RBLN-CA*, the vllm path elsewhere. The optimum path refuses tp/pp > 1
  (``platform/optimum_impl.py:72-80``).
- Options go in ``additional_config`` (field names of ``RBLNConfig`` /
  ``OptimumRBLNConfig``, ``config.py:72-233``), which wins over the deprecated
  ``VLLM_RBLN_*`` variables (``config.py:579-591``) and refuses keys the
  path's class lacks (``config.py:569-577``): ``use_custom_sampler`` on both
  paths, fixed decode-batch buckets on the vllm path only
  (``config.py:122-135``; buckets built in
  ``v1/worker/bucketing/exponential_bucketing_manager.py``: limit 1 gives
  the single bucket ``max_num_seqs // pp``).
- Block size: ``block_size == max_model_len`` selects normal attention
  (``v1/attention/backends/flash_attention.py:451``); otherwise flash
  attention partitions ``max_model_len`` into blocks, which must divide it
  (``v1/attention/ops/triton_flash_causal_attention.py:44,286``; the optimum
  path compiles ``kvcache_partition_len = block_size``,
  ``model_executor/models/optimum/compilation/__init__.py:188-190``, and
  requires a block size, ``utils/optimum/converter/from_vllm.py:91-99``).
- KV blocks: parity passes ``num_gpu_blocks_override`` =
  ``max_num_seqs * ceil(max_model_len / block_size) + 1`` (every sequence at
  full length, plus vLLM's null block) on the vllm-model path. Without it the
  pool is sized from memory: with host logits from a fixed DRAM figure on a
  dummy device (``v1/worker/utils.py:328-345``), and a small or cut model then
  asks for more blocks than the compiled attention's int16 block ids reach
  (``v1/worker/dynamic_kv_sizer.py:121-123,242-266``, raised from
  ``rbln_worker.py:474``: "The KV cache holds 32817 blocks ... at most
  32767"). The override reaches the pool through vLLM
  (``v1/core/kv_cache_utils.py:1103-1110``) and pins the dynamic KV cache of
  the device-tensor mode (``dynamic_kv_sizer.py:94-98``). On the optimum path
  the block count is the compiled model's own (``kvcache_num_blocks``,
  ``model_executor/models/optimum/model_base.py:165-181``) and an override
  would replace it (``utils/optimum/converter/from_optimum.py:154-170``)
  behind the compiled graph's back: none is passed there.
- Prompt logprobs are refused: on the vllm path the compiled prefill keeps
  only the sampled positions' hidden states
  (``v1/worker/rbln_model_runner.py:2252-2260``) while
  ``_get_prompt_logprobs_dict`` slices them as if every prompt position were
  there (``:2418-2420``; ``TODO: Support prompt logprobs`` at ``:969``): the
  3-D logits it computes then make ``RBLNSampler.gather_logprobs`` raise
  (``v1/sample/rbln_sampler.py:376-377``, "Index tensor must have the same
  number of dimensions as input tensor"; tests/recorder/test_rbln_e2e.py
  shows it). On the optimum path the compiled model returns the last
  position's logits only (``v1/worker/optimum_model_runner.py:430-453``).
- Host-side logits (``--rbln-host-logits``): ``VLLM_RBLN_USE_DEVICE_TENSOR=0``
  (``envs.py:264-273``, only an environment variable in 0.12, read when the
  path is applied, ``platform/__init__.py:429``; vllm path only).
- Compile cache: left on (keyed by the config and the compile variables,
  ``envs.py:381-392``, ``config.py:145-164``); ``--rbln-fresh-compile`` sets
  ``VLLM_DISABLE_COMPILE_CACHE=1``, which only the vllm path reads
  (``compilation/compiler.py:134``, ``v1/worker/mega_cache.py:184,208``).
- Async scheduling off: the plugin calls it unstable with the in-process
  (uni) executor (``platform/vllm_impl.py:340-350``) and the optimum path
  turns it off anyway (``platform/optimum_impl.py:63-70``).
- ``--num-hidden-layers K``: on the vllm-model path the plugin's own
  ``VLLM_RBLN_NUM_HIDDEN_LAYERS=K`` (``patches/distributed_utils.py:21-57``:
  only the first K layers are built, the rest's weights are skipped; part of
  the compile-cache key, ``envs.py:386-392``; refused below the pp size,
  ``:47-53``). The patch's condition (``:30``) is evaluated each time an engine
  is created (``create_engine_config`` -> ``pre_register_and_update``,
  ``platform/__init__.py:288-292`` -> ``patches/registry.py:264-286``, which
  retries patches not yet applied), and the patched function reads the variable
  on every call, so recordings of several depths in one process each get their
  own limit. On the optimum path,
  ``hf_overrides`` (optimum-rbln compiles from the overridden config,
  ``model_executor/models/optimum/model_base.py:250-269``). A stray
  ``VLLM_RBLN_NUM_HIDDEN_LAYERS`` in the environment is refused: the store
  would not say the model was cut.
- Warm-up stays on (``VLLM_RBLN_ENABLE_WARM_UP`` unset): 0.12's warm-up never
  requests logprobs (``v1/worker/rbln_model_runner.py:2665,3490``), and turning
  it off moves compilation into the first requests and stops the KV cache
  being sized from the compiled model (``v1/worker/utils.py:378-384``,
  ``v1/worker/rbln_worker.py:512``).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parity.errors import DeviceUnavailableError, UsageError

from .base import TRUNCATE_HF_OVERRIDES, TRUNCATE_PLUGIN_ENV, DeviceProfile, EngineOptions, module_available

if TYPE_CHECKING:
    from parity.schemas import Request

PATH_AUTO = "auto"
PATH_VLLM = "vllm-model"
PATH_OPTIMUM = "optimum"
PATHS = (PATH_AUTO, PATH_VLLM, PATH_OPTIMUM)
# The plugin's names for the two paths (config.py:319-324).
MODEL_IMPL = {PATH_VLLM: "vllm", PATH_OPTIMUM: "optimum"}

CA_PREFIX = "RBLN-CA"  # platform/__init__.py:54
NPU_NAME_ENV = ("RBLN_FORCE_NPU_NAME", "RBLN_TARGET_SOC")  # platform/__init__.py:140-143
# Entry points the plugin needs loaded (entry_points.txt); rbln_new_models is a no-op in 0.12.
REQUIRED_PLUGINS = ("rbln", "rbln_custom_ops")


@dataclass(frozen=True)
class PathChoice:
    path: str               # vllm-model | optimum
    requested: str          # what --rbln-path said
    npu_name: str | None
    npu_source: str | None  # where the name was read
    decided_here: bool      # False: auto without an NPU name; the NPU host decides again


@functools.cache
def _runtime_npu_name() -> str | None:
    """The runtime's name for NPU 0, asked once per process (the device does not change under us)."""
    try:
        import rebel

        name = rebel.get_npu_name(0)
    except Exception:  # noqa: BLE001 - no runtime or no NPU here: fall back like the plugin does
        return None
    return str(name) if name else None


def npu_name() -> tuple[str | None, str | None]:
    """The NPU name the plugin will see, read the way it reads it, or (None, None)."""
    name = _runtime_npu_name()
    if name:
        return name, "rebel.get_npu_name(0)"
    for var in NPU_NAME_ENV:
        if os.environ.get(var):
            return os.environ[var], var
    return None, None


def is_ca(name: str | None) -> bool:
    return bool(name) and name.strip().upper().startswith(CA_PREFIX)


def choose_path(opts: EngineOptions) -> PathChoice:
    if opts.rbln_path not in PATHS:
        raise UsageError(f"--rbln-path must be one of {', '.join(PATHS)}, not {opts.rbln_path!r}")
    name, source = npu_name()
    if opts.rbln_path != PATH_AUTO:
        return PathChoice(opts.rbln_path, opts.rbln_path, name, source, True)
    if name is None:
        return PathChoice(PATH_VLLM, PATH_AUTO, None, None, False)
    return PathChoice(PATH_OPTIMUM if is_ca(name) else PATH_VLLM, PATH_AUTO, name, source, True)


def block_size(opts: EngineOptions) -> int:
    return opts.max_model_len if opts.block_size is None else opts.block_size


def kv_blocks_needed(opts: EngineOptions) -> int:
    """Every sequence of the batch at max_model_len, plus vLLM's null block: all parity ever asks for."""
    return opts.batch * math.ceil(opts.max_model_len / block_size(opts)) + 1


class RblnProfile(DeviceProfile):
    name = "rbln"
    prompt_logprobs_default = False
    install_hint = (
        "on an NPU host: pip install 'parity[rbln]' --extra-index-url <Rebellions package index>, "
        "which installs vllm-rbln with its runtime rebel-compiler"
    )
    packages = ("vllm-rbln", "vllm", "torch", "torch-rbln", "optimum-rbln", "rebel-compiler")

    def check_available(self) -> None:
        missing = [m for m in ("vllm_rbln", "rebel") if not module_available(m)]
        if missing:
            raise DeviceUnavailableError(
                f"device 'rbln' needs the vllm-rbln plugin and its runtime rebel-compiler "
                f"({', '.join(missing)} not importable)",
                hint=self.install_hint,
            )
        allowed = os.environ.get("VLLM_PLUGINS")
        if allowed is not None:
            absent = [p for p in REQUIRED_PLUGINS if p not in allowed.split(",")]
            if absent:
                raise DeviceUnavailableError(
                    f"VLLM_PLUGINS={allowed} keeps vllm-rbln's {', '.join(absent)} plugin from loading",
                    hint="unset VLLM_PLUGINS (vLLM then loads every installed plugin)",
                )

    def validate(self, opts: EngineOptions, request: "Request") -> None:
        bs, mml = block_size(opts), opts.max_model_len
        if bs < 1 or (bs != mml and mml % bs):
            divisor = next((d for d in range(mml // 2, 0, -1) if mml % d == 0), None)
            hint = "omit --block-size (it defaults to --max-model-len)" + (
                f" or pass a divisor of {mml} such as {divisor}" if divisor else "")
            raise UsageError(
                f"--block-size {bs} does not fit --max-model-len {mml}: vllm-rbln needs the block size "
                "equal to max_model_len or a divisor of it", hint=hint)
        choice = choose_path(opts)
        if request.prompt_logprobs:
            why = ("on the vllm-model path its compiled prefill keeps only the last position's hidden state "
                   "(v1/worker/rbln_model_runner.py:2252-2260) and the prompt-logprob request then fails in "
                   "RBLNSampler.gather_logprobs (v1/sample/rbln_sampler.py:376-377)"
                   if choice.path == PATH_VLLM else
                   "on the optimum path the compiled model returns one row of logits per request, the last "
                   "position's (v1/worker/optimum_model_runner.py:430-453)")
            raise UsageError(f"--prompt-logprobs is not supported on --device rbln: vllm-rbln 0.12 cannot compute "
                             f"prompt logprobs: {why}",
                             hint="drop --prompt-logprobs (generated positions are recorded); prompt rows "
                                  "come from a cpu or hf recording")
        if choice.path == PATH_VLLM and is_ca(choice.npu_name):
            raise UsageError(
                f"vllm-rbln refuses the vllm-model path on {choice.npu_name} (read from {choice.npu_source})",
                hint="use --rbln-path optimum or auto",
            )
        if choice.path == PATH_OPTIMUM:
            if opts.tp > 1 or opts.pp > 1:
                raise UsageError(
                    f"the optimum path of vllm-rbln runs with --tp 1 and --pp 1 only (got --tp {opts.tp} --pp {opts.pp})"
                    + (f"; auto chose it for {choice.npu_name}" if choice.requested == PATH_AUTO else ""),
                    hint="drop --tp/--pp, or use --rbln-path vllm-model on an NPU that allows it",
                )
            if opts.rbln_fresh_compile:
                raise UsageError(
                    "--rbln-fresh-compile works on the vllm-model path only: the optimum path caches compiled "
                    "models under VLLM_CACHE_ROOT/compiled_models whatever VLLM_DISABLE_COMPILE_CACHE says",
                    hint="point VLLM_CACHE_ROOT at an empty directory instead",
                )
        stray = os.environ.get("VLLM_RBLN_NUM_HIDDEN_LAYERS", "").strip()
        if stray not in ("", "0") and stray != str(opts.num_hidden_layers or ""):
            # The plugin would truncate the model behind the store's back.
            raise UsageError(
                f"VLLM_RBLN_NUM_HIDDEN_LAYERS={stray} is set in the environment, and the store would not say so",
                hint="unset it and pass --num-hidden-layers instead",
            )
        if choice.path == PATH_VLLM and opts.num_hidden_layers and opts.num_hidden_layers < opts.pp:
            # patches/distributed_utils.py:47-53: a stage with no layer breaks the KV-cache plan.
            raise UsageError(f"--num-hidden-layers {opts.num_hidden_layers} is smaller than --pp {opts.pp}: "
                             "vllm-rbln refuses a pipeline stage with no layer")
        if choice.path == PATH_VLLM and opts.pp > 1 and opts.batch < opts.pp:
            # platform/vllm_impl.py:151-159: the per-stage decode batch is max_num_seqs // pp.
            raise UsageError(f"--pp {opts.pp} needs --batch {opts.pp} or more on rbln (got --batch {opts.batch})")
        if opts.rbln_fresh_compile and os.environ.get("VLLM_RBLN_COMPILE_ONLY", "").lower() in ("1", "true"):
            raise UsageError("--rbln-fresh-compile cannot be combined with VLLM_RBLN_COMPILE_ONLY=1 "
                             "(compile-only writes its artifacts to the compile cache)")
        legacy = os.environ.get("VLLM_RBLN_USE_VLLM_MODEL")
        if legacy is not None:
            legacy_path = PATH_VLLM if legacy.lower() in ("1", "true") else PATH_OPTIMUM
            if legacy_path != choice.path:
                raise UsageError(
                    f"VLLM_RBLN_USE_VLLM_MODEL={legacy} selects the {legacy_path} path and this run the "
                    f"{choice.path} path; vllm-rbln refuses the disagreement",
                    hint="unset VLLM_RBLN_USE_VLLM_MODEL (deprecated; the path is chosen with --rbln-path)",
                )

    def host(self) -> dict[str, str]:
        """The base host facts and the NPU the plugin saw (RBLN-CR03, ...), when one is named."""
        facts = super().host()
        name, source = npu_name()
        if name:
            facts["npu"] = name
            facts["npu_source"] = source
        return facts

    def layer_truncation(self, opts: EngineOptions) -> str:
        # vllm-model: the plugin's own VLLM_RBLN_NUM_HIDDEN_LAYERS builds only the
        # first K layers and skips the rest's weights (patches/distributed_utils.py:21-57),
        # and is part of the compile-cache key (envs.py:386-392), so no weights are copied.
        # optimum: optimum-rbln compiles from the overridden hf_config
        # (model_executor/models/optimum/model_base.py:250-269).
        return TRUNCATE_PLUGIN_ENV if choose_path(opts).path == PATH_VLLM else TRUNCATE_HF_OVERRIDES

    def plan_details(self, opts: EngineOptions) -> dict:
        choice = choose_path(opts)
        details = {
            "path": choice.path,
            "path_requested": choice.requested,
            "npu_name": choice.npu_name,
            "npu_name_source": choice.npu_source,
            "path_decided_here": choice.decided_here,
            "block_size": block_size(opts),
            "kv_blocks": ({"num_gpu_blocks_override": kv_blocks_needed(opts),
                           "why": f"--batch {opts.batch} sequences x ceil({opts.max_model_len} / "
                                  f"{block_size(opts)}) blocks + 1 null block: the most parity uses; the "
                                  "plugin's memory-based count can pass the compiled attention's int16 block ids"}
                          if choice.path == PATH_VLLM else
                          {"num_gpu_blocks_override": None,
                           "why": "the optimum path uses the compiled model's own block count"}),
            "host_logits": opts.rbln_host_logits,
            "fresh_compile": opts.rbln_fresh_compile,
        }
        if not choice.decided_here:
            details["note"] = (
                "no NPU name here (rebel.get_npu_name(0), RBLN_FORCE_NPU_NAME, RBLN_TARGET_SOC): the NPU host "
                "decides again from its NPU name: optimum on RBLN-CA*, vllm-model otherwise")
        if opts.rbln_host_logits and choice.path == PATH_OPTIMUM:
            details["host_logits_note"] = "the optimum path keeps logits on the host already"
        return details

    def environment(self, opts: EngineOptions, *, full_vocab: bool) -> dict[str, str]:
        env = {
            # The plugin raises under vLLM 0.30's default V2 runner.
            "VLLM_USE_V2_MODEL_RUNNER": "0",
            # In-process engine core: the recorder's capture state lives in this
            # process. The plugin needs no engine-core process; tp/pp > 1 still
            # run the model in vLLM's worker processes.
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        }
        path = choose_path(opts).path
        if opts.rbln_host_logits and path == PATH_VLLM:
            env["VLLM_RBLN_USE_DEVICE_TENSOR"] = "0"
        if opts.rbln_fresh_compile:
            env["VLLM_DISABLE_COMPILE_CACHE"] = "1"
        if opts.num_hidden_layers and path == PATH_VLLM:
            env["VLLM_RBLN_NUM_HIDDEN_LAYERS"] = str(opts.num_hidden_layers)
        return env

    def engine_args(self, opts: EngineOptions) -> dict:
        path = choose_path(opts).path
        # Explicit, so a stray VLLM_RBLN_SAMPLER=0 cannot swap in another sampler.
        additional: dict = {"use_custom_sampler": True}
        if path == PATH_VLLM and opts.batch > 1:
            # One decode bucket (max_num_seqs // pp): every decode step runs the same
            # compiled batch shape whatever VLLM_RBLN_DECODE_BATCH_BUCKET_* say.
            additional.update(decode_batch_bucket_strategy="exponential", decode_batch_bucket_min=1,
                              decode_batch_bucket_limit=1)
        args = {
            "model_impl": MODEL_IMPL[path],
            "additional_config": additional,
            "max_num_seqs": opts.batch,
            "block_size": block_size(opts),
            "tensor_parallel_size": opts.tp,
            "pipeline_parallel_size": opts.pp,
            "data_parallel_size": opts.dp,
            "enable_expert_parallel": opts.ep,
            "enable_prefix_caching": False,
            "async_scheduling": False,
            "max_num_batched_tokens": opts.max_num_batched_tokens or max(opts.max_model_len, 128),
        }
        if path == PATH_VLLM:
            args["num_gpu_blocks_override"] = kv_blocks_needed(opts)
        return args
