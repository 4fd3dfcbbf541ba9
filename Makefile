# imagegen: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

REQUIREMENTS := requirements/dev.txt layers/common/requirements.txt gpu_service/requirements.txt pyproject.toml

.PHONY: help venv demo run lint template deployment unit test clean

help:
	@echo "make demo      install everything, run the whole workflow offline once, print the image path"
	@echo "make test      install everything and run every check CI runs"
	@echo "make run       start the local stack (API on http://127.0.0.1:3000) until Ctrl-C"

$(STAMP): $(REQUIREMENTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make needs Python 3.11 as python3 (the CPU torch wheel on disk is cp311); set PYTHON=...")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements/dev.txt -r gpu_service/requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/imagegen demo

run: venv
	$(BIN)/imagegen local

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/common/imagegen_common functions imagegen gpu_service

template:
	bash scripts/check_template.sh

deployment:
	bash scripts/check_deployment.sh

unit: venv
	$(BIN)/pytest

test: lint template deployment unit

clean:
	rm -rf $(VENV) .venv-sam .venv-checkov .venv-deploy .aws-sam .mypy_cache .ruff_cache .pytest_cache
