# Set-up and the two commands the README promises. Everything goes into .venv; torch is installed
# first at a version 2.13.0 satisfies, so pip never resolves an open `torch` to a multi-GB CUDA build; the
# package, its test extras and the deepinv extra then install under a constraints file pinning that torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu where the default index only has CUDA builds
TORCH_INDEX ?=

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	printf 'torch==$(TORCH_VERSION)\n' > $(VENV)/constraints.txt  # nothing below may replace torch
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[dev,deepinv]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/lorun demo

test: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check lorun_peft tests examples benchmarks scripts
	$(VENV)/bin/ruff format --check lorun_peft tests examples benchmarks scripts

clean:
	rm -rf $(VENV) build *.egg-info
