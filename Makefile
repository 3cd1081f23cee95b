# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ldmkit-installed

.PHONY: demo test env data clean

$(PY):
	python3 -m venv $(VENV)

# torch is pinned to the local CPU build (an unpinned torch pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

# Fashion-MNIST from Debian (dataset-fashion-mnist); skipped when already installed.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

demo: env data
	$(PY) -m ldmkit demo

test: env data
	$(PY) -m pytest

clean:
	rm -rf runs .pytest_cache
