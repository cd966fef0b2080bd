"""Stand-in for torch-rbln's ``torch.rbln`` device module: a dummy device, as on a host without an NPU.

Replaces: the Python face of torch-rbln (a C++ ``PrivateUse1`` device backend
that needs ``librbln.so``). Why: ``v1/worker/dynamic_kv_sizer.py`` and
``v1/worker/utils.py:331`` import ``torch.rbln`` unconditionally, and
``rbln_model_runner.py:522`` takes its ``offload`` context. With
``VLLM_RBLN_USE_DEVICE_TENSOR=0`` the plugin only asks whether the device is a
dummy one (``utils.py:335``: then it sizes the KV cache from a fixed DRAM
figure), empties caches and offloads nothing. "rbln" stays no torch device
string: the device-tensor mode cannot run on this stand-in.
"""
import contextlib


def is_available():
    return False


def device_count():
    return 0


def is_dummy_device():
    return True


def empty_cache(*args, **kwargs):
    return None


def release_offload_temp_storage():
    return 0


@contextlib.contextmanager
def offload(*args, **kwargs):
    yield
