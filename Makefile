# make venv | train | test | lint | format | bench | clean
# Needs only Python (3.11 or 3.12+) and make; everything else goes into .venv.

# Prefer python3.11 where it exists (it also runs the torch cross-checks);
# e.g. `make test PYTHON=python3.12 VENV=.venv312` for the other CI leg.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || echo python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
WORKDIR ?= runs/digits
CONFIG ?= experiments/digits.py
# Extra flags, e.g. make train ARGS='--config.total_steps=100'.
ARGS ?=
PYTEST_ARGS ?= -n 2 --durations=10
LINT_PATHS ?= perceiver experiments benchmarks tests setup.py
# House style (shared/STYLE.md): 2-space indent, 80 columns, single quotes.
RUFF_CONFIG := --config 'indent-width = 2' --config 'line-length = 80' \
	--config "format.quote-style = 'single'"
# pyflakes + syntax-level pycodestyle; __init__.py files re-export names.
RUFF_RULES := --select E4,E7,E9,F --ignore E731 \
	--per-file-ignores '__init__.py:F401'

# Tests never reach a model hub: reference models are built offline.
export HF_HUB_OFFLINE = 1
export TRANSFORMERS_OFFLINE = 1
export MPLBACKEND = Agg

.PHONY: venv venv-main train test lint format bench clean

# Stamps: pip runs again only when a requirements file or setup.py changes.
$(VENV)/.stamp-main: requirements.txt setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --progress-bar off -r requirements.txt -e .
	touch $@

$(VENV)/.stamp-test: $(VENV)/.stamp-main requirements-test.txt
	$(PIP) install -q --progress-bar off -r requirements.txt -r requirements-test.txt
	touch $@

venv-main: $(VENV)/.stamp-main  ## runtime deps only (enough to train)

venv: $(VENV)/.stamp-test  ## runtime + test deps + editable install

train: $(VENV)/.stamp-main
	$(PY) -m experiments.main --config=$(CONFIG) --workdir=$(WORKDIR) $(ARGS)

test: $(VENV)/.stamp-test
	$(PY) -m pytest $(PYTEST_ARGS) tests

lint: $(VENV)/.stamp-test
	$(VENV)/bin/ruff check $(RUFF_CONFIG) $(RUFF_RULES) $(LINT_PATHS)
	$(VENV)/bin/ruff format --check --diff $(RUFF_CONFIG) $(LINT_PATHS)

format: $(VENV)/.stamp-test
	$(VENV)/bin/ruff format $(RUFF_CONFIG) $(LINT_PATHS)

# make bench: the presets table, JAX against torch + transformers, into
# bench_out/presets. BENCH names another benchmarks/ module (scaling,
# streamed_encode, input_pipeline, gpu), written to bench_out/$(BENCH), e.g.
# make bench BENCH=scaling ARGS='--max_log2=16'.
BENCH ?= presets
bench: $(VENV)/.stamp-test
	$(PY) -m benchmarks.$(BENCH) --out=bench_out/$(BENCH) $(ARGS)

clean:
	rm -rf build *.egg-info .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
