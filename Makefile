# The single entry point: `make install`, `make demo`, `make test`, `make bench`, `make lint`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cnnlab-installed

.PHONY: install demo test test-all bench lint clean

install: $(STAMP)

# Re-install only when the package metadata changes; the editable install picks up code edits.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@# trace the zoo's table into the user cache once (seconds), so `cnnlab models` starts in a tenth of one
	-$(VENV)/bin/cnnlab models > /dev/null
	touch $(STAMP)

demo: install
	$(VENV)/bin/cnnlab demo

# the suite without the tests marked long (each over 15 s on an AVX2 laptop-class CPU): under 15 min there
test: install
	$(PY) -m pytest -q -m "not long"

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/augment.py
	$(PY) benchmarks/train_speed.py

lint: install
	$(VENV)/bin/ruff check cnnlab tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis build dist *.egg-info
