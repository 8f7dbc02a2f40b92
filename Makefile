# Set-up and checks. Every target installs what it needs into .venv, idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1

.PHONY: install demo test lint bench clean mutation

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tipretrieval demo --out demo-out

test: lint
	$(BIN)/python -m pytest -q tests

# Mutation testing of the core (tools/mutation.py, [mutmut] in setup.cfg); not part of `test`.
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py --fresh

lint: $(STAMP)
	$(BIN)/ruff check tipretrieval tests tools
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo-out .pytest_cache mutants
