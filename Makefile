# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAMPLES := data/samples
DEMO_OUT := out/demo

.PHONY: install demo test bench assets samples clean

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
	$(PY) benchmarks/bench_codec_tokenizers.py
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_asr.py
	$(PY) benchmarks/bench_continual.py
	$(PY) benchmarks/bench_entropy.py
	$(PY) benchmarks/bench_live.py
	$(PY) benchmarks/bench_scale.py

# Re-creates the shipped defaults in operators/assets from generated data (slow: ~1 h on 2 cores).
assets: install
	$(VENV)/bin/mediabeam make-tokenizer-assets
	$(PY) -m operators.compression.split_compute
	command -v espeak-ng >/dev/null || (apt-get update && apt-get install -y espeak-ng)
	$(VENV)/bin/mediabeam train-asr

clean:
	rm -rf $(VENV) out $(SAMPLES) *.egg-info
