# VolexSwarm: `make run` starts the whole platform, `make test` runs the test suite.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint down status venv

# Re-install only when the dependency files change.
$(STAMP): pyproject.toml requirements.txt
	@test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV) \
		|| { echo 'python3.11 -m venv failed: install Python 3.11 with venv (Debian: python3.11-venv)'; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	$(BIN)/volex up

down: $(STAMP)
	$(BIN)/volex down

status: $(STAMP)
	$(BIN)/volex status

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
