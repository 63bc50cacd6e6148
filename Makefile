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
	$(PY) -m pip install -q -e '.[test,diffusers]'
	touch $@

.PHONY: install serve test bench chromium
install: $(VENV)/.installed

# The page test drives Debian's Chromium (Playwright uses the system browser; nothing is downloaded).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

serve: $(VENV)/.installed
	$(VENV)/bin/repaint serve

test: $(VENV)/.installed chromium
	$(PY) -m pytest

bench: $(VENV)/.installed
	$(PY) -m bench.sampler --batch 1
