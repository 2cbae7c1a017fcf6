# Two commands on a fresh machine: `make test` and `make train`. Both create .venv and install
# the exact pins of requirements.lock (torch 2.14.1 + torchvision 0.29.1) and this package.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test lint format train clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

# Two workers, a test file each at a time (tests in one file share runs); one BLAS thread each.
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

train: install
	$(BIN)/python train.py

clean:
	rm -rf $(VENV) .pytest_cache
