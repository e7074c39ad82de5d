# make demo: set up and run the main job.  make test: set up and run the tests.
# make test-thorough: the property tests with 500 hypothesis examples each (scheduled runs).
# make mutation: mutation score of the core modules (tools/mutation/targets.toml), two mutmut
#   workers (MUTATION_CHILDREN=1 on a machine shared with other work): 30 min on 2 idle cores
#   (docs/core-tests.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU wheel of this torch lies on the build machines' disk; an unpinned torch pulls CUDA.
TORCH_PIN ?= torch==2.13.0
# Parallel mutmut workers of `make mutation`: one per core of the 2-core build machine.
MUTATION_CHILDREN ?= 2

.PHONY: setup demo test test-thorough mutation lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e ".[test,lint,data,hf,browser,keras,onnx]" "$(TORCH_PIN)"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m attnkit.cli demo

test: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m mypy
	OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q

test-thorough: $(STAMP)
	HYPOTHESIS_PROFILE=thorough OMP_NUM_THREADS=1 $(PY) -m pytest -n 2 -q \
		tests/test_attention.py tests/test_masks.py tests/test_bias.py

mutation: $(STAMP)
	$(PY) -m pip install -q -e ".[mutation]" "$(TORCH_PIN)"
	nice -n 10 $(PY) tools/mutation/run.py --children $(MUTATION_CHILDREN)

lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(PY) -m mypy
	$(VENV)/bin/lint-imports --no-cache

bench: $(STAMP)
	$(PY) -m attnkit.cli bench attention

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
