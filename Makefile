# Two commands set everything up on a fresh machine with Python 3.11 and pip:
#   make demo   -- create .venv, install, run the demo pipeline end to end (results/)
#   make test   -- create .venv, install, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-fast lint report clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

demo: $(BIN)/.installed
	$(BIN)/snakemake --profile profiles/local --cores 2
	$(BIN)/snakemake --profile profiles/local --cores 2 --report results/report.html
	@echo "demo done: open results/report.html"

test: $(BIN)/.installed
	$(BIN)/pytest

# Everything but the `slow` tests (Snakemake runs, localhost Slurm, multi-process DDP, the browser).
test-fast: $(BIN)/.installed
	$(BIN)/pytest -m "not slow"

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --profile profiles/local --lint

clean:
	rm -rf results .snakemake
