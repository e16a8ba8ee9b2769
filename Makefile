# Two commands do all set-up on a fresh machine (Python 3.10+, cmake, ninja, a C++ compiler):
#   make demo   build llama-server (CPU), fetch the embedded model, validate the default matrix
#   make test   the linters (ruff, mypy), then the CI validation matrices, then unit + integration tests
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
REPORTS := reports

.PHONY: demo test unit lint setup clean-reports

$(BIN)/llamactl: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,plot]'
	@touch $@

setup: $(BIN)/llamactl

demo: setup
	$(BIN)/llamactl validate default --no-env --json-out $(REPORTS)/validate-default.json --junit $(REPORTS)/validate-default.xml --html $(REPORTS)/validate-default.html

unit: setup
	$(BIN)/pytest -m "not integration" -q

lint: setup
	$(BIN)/ruff check llamactl tests benchmarks
	$(BIN)/mypy llamactl

test: setup lint
	$(BIN)/llamactl validate default --no-env --junit $(REPORTS)/validate-default.xml --json-out $(REPORTS)/validate-default.json --html $(REPORTS)/validate-default.html
	$(BIN)/llamactl validate tiny-gemma4-mtp --no-env --junit $(REPORTS)/validate-tiny-gemma4-mtp.xml --json-out $(REPORTS)/validate-tiny-gemma4-mtp.json --html $(REPORTS)/validate-tiny-gemma4-mtp.html
	$(BIN)/pytest --junitxml=$(REPORTS)/pytest.xml
