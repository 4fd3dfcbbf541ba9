# imagegen: the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
PORT ?= 3000
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

REQUIREMENTS := requirements/uv.txt requirements/dev.txt layers/common/requirements.txt \
	functions/webhook_delivery/requirements.txt gpu_service/requirements.txt pyproject.toml
# The venvs are installed with uv (scripts/tool_venv.sh: uv_install), pinned in requirements/uv.txt.
TOOLS := export BASE_PYTHON=$(PYTHON) && source scripts/tool_venv.sh &&

.PHONY: help venv demo run lint template deployment unit workflow e2e e2e-stack e2e-processes \
	browser test clean

help:
	@echo "make demo      install everything, run the whole workflow offline once, print the image path"
	@echo "make test      install everything and run every check CI runs"
	@echo "make run       start the local stack (API and playground on http://127.0.0.1:3000) until Ctrl-C"
	@echo "               PORT=N for another API port (make run PORT=3001, make demo PORT=3001)"

$(STAMP): $(REQUIREMENTS)
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "make needs Python 3.11 as python3 (the CPU torch wheel on disk is cp311); set PYTHON=...")'
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(TOOLS) ensure_uv && uv_install $(VENV) -r requirements/dev.txt -r gpu_service/requirements.txt \
		&& uv_install $(VENV) --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/imagegen demo --port $(PORT)

run: venv
	$(BIN)/imagegen local --port $(PORT) --allow-loopback-webhooks

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy layers/common/imagegen_common imagegen gpu_service
	@# Each function apart, with its folder on the path as Lambda has it, so app.py's imports of
	@# its own modules (from executions import ...) are checked, not ignored as missing.
	@status=0; for function in functions/*/; do \
		echo "mypy $$function"; MYPYPATH=$$function $(BIN)/mypy $$function || status=1; \
	done; exit $$status

template:
	bash scripts/check_template.sh

deployment:
	bash scripts/check_deployment.sh

# The tests by what they need, one pytest run (and one summary) each, with the 25 slowest tests
# listed. The unit tests are independent of each other: they run on every core (pytest-xdist).
PYTEST := $(BIN)/pytest --durations=25
unit: venv
	$(PYTEST) -n auto tests/unit tests/gpu_service

workflow: venv
	$(PYTEST) tests/workflow

# The end-to-end tests and the playground's (web/, in headless Chromium: /usr/bin/chromium, which
# .ci/run installs): those on the one local stack they share (tests/conftest.py marks them
# shared_stack) and the others, which start stacks and processes of their own, as two pytest
# runs side by side. (pytest-xdist's --dist loadgroup does not group tests under pytest 9.2.)
E2E_LANES := 'e2e-stack & e2e-processes'
e2e: venv
	bash scripts/run_checks.sh $(E2E_LANES)

e2e-stack: venv
	$(PYTEST) -m shared_stack tests/e2e tests/browser

e2e-processes: venv
	$(PYTEST) -m "not shared_stack" tests/e2e

browser: venv
	$(PYTEST) tests/browser

# Every check CI runs, each step timed (scripts/run_checks.sh prints the times at the end); the
# static checks run beside the workflow tests, which leave most of a core idle.
test: venv
	bash scripts/run_checks.sh unit 'workflow & lint + template + deployment' $(E2E_LANES)

clean:
	rm -rf $(VENV) .venv-uv .venv-sam .venv-checkov .venv-deploy .aws-sam .mypy_cache .ruff_cache \
		.pytest_cache .schemathesis
