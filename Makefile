# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# CPU only by default; `make install-cuda` adds the CUDA toolchain (numba-cuda) where a GPU is wanted.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
# Extra pip flags for torch, e.g. TORCH_PIP_FLAGS='--index-url https://download.pytorch.org/whl/cpu'
# where the default index would bring the CUDA build.
TORCH_PIP_FLAGS ?=
SAMPLES := data/samples
DEMO_OUT := out/demo

.PHONY: install install-cuda system-deps demo test bench assets samples clean

install: $(VENV)/.installed system-deps

# Speech (espeak-ng) and a headless browser (chromium) for the live tests, from Debian's packages
# where we are root and they are missing; without them those tests skip and say why.
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { ! command -v espeak-ng >/dev/null || ! command -v chromium >/dev/null; }; then \
	  echo "installing espeak-ng and chromium with apt-get"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng chromium) >/dev/null 2>&1 \
	  || echo "note: apt-get could not install espeak-ng/chromium; the speech and browser tests will skip"; fi

$(VENV)/.installed: setup.py
	@echo "installing into $(VENV) (a few minutes the first time)"
	@$(PYTHON) -m venv $(VENV)
	@$(PIP) install --upgrade pip
	@$(PIP) install $(TORCH_PIP_FLAGS) torch==2.13.0
	@$(PIP) install -e '.[test,bench]'
	@# MDS reader of tests/test_exports.py: mosaicml-streaming pins numpy<2.2, so it comes without
	@# its pins, after the few packages its import needs (--no-deps also skips pip's conflict report)
	@$(PIP) install zstd python-snappy catalogue brotli transformers
	@$(PIP) install --no-deps mosaicml-streaming==0.13.0
	@# Silero VAD's model files for operators/asr/silero_vad.py (its code is never imported): --no-deps, so pip leaves torch alone
	@$(PIP) install --no-deps silero-vad==6.2.3
	@touch $@

install-cuda: install
	@$(PIP) install -e '.[cuda]'

samples: install
	@$(VENV)/bin/mediabeam make-samples --output $(SAMPLES)

demo: samples
	@$(VENV)/bin/mediabeam build-corpus --input '$(SAMPLES)/shard-{000000..000003}.tar' --output $(DEMO_OUT) \
	    --export all --seq-len 4096

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
	$(VENV)/bin/mediabeam train-asr --install-as-default

clean:
	rm -rf $(VENV) out $(SAMPLES) *.egg-info build
