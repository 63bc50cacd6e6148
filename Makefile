# Two commands on a fresh machine with Python 3.11:
#   make serve   # install into .venv and run the service on its embedded defaults
#   make test    # install into .venv and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: install serve test bench
install: $(VENV)/.installed

serve: $(VENV)/.installed
	$(VENV)/bin/repaint serve

test: $(VENV)/.installed
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.sampler --batch 1
