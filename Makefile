# Two commands do all the set-up on a fresh machine: `make train` (the main job) and `make test`.
# Each creates .venv on first use from pyproject.toml's pinned dependencies.
PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
RUN    := PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/python

.PHONY: venv train test test-slow bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

## The main job: train the paper's HSSM (2 blocks, H = P = 16) on BasicMotions with every HRU block on
## the simulated board (whose Verilated image is built on first use); ARGS adds or overrides options.
TRAIN_ARGS ?= --blocks 2 --hidden 16 --oscillators 16 --epochs 20
train: venv
	$(RUN) -m echoboard.host.cli train $(TRAIN_ARGS) $(ARGS)

## The default test suite (what CI runs).
test: venv
	$(RUN) -m pytest -q --durations=10 -m "not slow" tests

## Long runs: long sequences, format sweeps, full training comparisons.
test-slow: venv
	$(RUN) -m pytest -q --durations=10 -m slow tests

bench: venv
	$(RUN) -m benchmarks.run_all $(ARGS)

clean:
	rm -rf $(VENV) build runs
