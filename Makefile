# Two entry points that work on a fresh machine from a clean clone:
#   make demo   set up a virtual environment and run one simulated 96-well scan end to end
#   make test   set up a virtual environment with the test tools and run the whole suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_PLATE ?= SIM-DEMO-0001

.PHONY: demo test lint typecheck check install-service install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The service alone (CPU onnxruntime, no PyTorch). Stamp files make re-runs instant.
$(VENV)/.service-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu]"
	touch $@

# Everything the tests need: service + training (CPU torch 2.13) + PostgreSQL driver + dev tools
# + the optional numba kernel (so its equivalence tests run) + Dask distributed, bioimageio.core
# and sila2 (their tests).
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[cpu,train,dev,fast,cluster,bioimageio,sila]"
	touch $@ $(VENV)/.service-installed

install-service: $(VENV)/.service-installed
install-dev: $(VENV)/.dev-installed

# The demo keeps its database and images in their own folder (not ./mscreen-data, the default
# of every other command), so it ends by printing the commands that read that folder.
demo: $(VENV)/.service-installed
	@demo_dir=$${MSCREEN_DATA_DIR:-mscreen-data/demo}; \
	MSCREEN_DATA_DIR=$$demo_dir $(BIN)/mscreen scan --plate $(DEMO_PLATE) --compare-truth && \
	echo "" && \
	echo "The demo's database and images are in $$demo_dir. Next:" && \
	echo "  MSCREEN_DATA_DIR=$$demo_dir $(BIN)/mscreen results --plate $(DEMO_PLATE)" && \
	echo "  $(BIN)/mscreen sim fct-export --plate $(DEMO_PLATE) --output fct.csv" && \
	echo "  MSCREEN_DATA_DIR=$$demo_dir $(BIN)/mscreen serve   # then http://127.0.0.1:8000/"

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest -q

# ruff, then the package layers (import-linter contracts in pyproject.toml).
lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy app cli store models training hardware migrations

check: lint typecheck test

clean:
	rm -rf $(VENV) mscreen-data .pytest_cache .mypy_cache .ruff_cache
