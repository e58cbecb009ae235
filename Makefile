# Set-up on a fresh machine: `make demo` or `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: install demo test test-fast lint bench clean-demo

install: $(STAMP)

# Re-installs only when the dependency pins change; `make install` is a no-op otherwise.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	$(PY) experiments/demo.py

test: install
	$(PY) -m pytest -q tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

lint: install
	$(PY) -m ruff check hubert_lit tests experiments
	$(PY) -m ruff format --check hubert_lit tests experiments

clean-demo:
	rm -rf data/demo runs/demo
