# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAMPLES := data/samples
DEMO_OUT := out/demo

.PHONY: install demo test bench samples clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,bench,cuda]'
	touch $@

samples: install
	$(VENV)/bin/mediabeam make-samples --output $(SAMPLES)

demo: samples
	$(VENV)/bin/mediabeam build-corpus --input '$(SAMPLES)/shard-{000000..000003}.tar' --output $(DEMO_OUT)

test: install
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: install
	$(PY) benchmarks/bench_corpus.py

clean:
	rm -rf $(VENV) out $(SAMPLES) *.egg-info
