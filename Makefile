# keyveil: `make demo` and `make test` set everything up from a clean clone; `make docs` builds the site.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.keyveil-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test setup data lint docs figures clean

setup: $(STAMP) data

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PINS)
	$(BIN)/pip install --quiet -e '.[data,experiments,privacy,federated,detection,timm,dev,docs]' $(TORCH_PINS)
	touch $(STAMP)

# Fashion-MNIST ships as a Debian package; install it when we are root and apt exists.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
		echo "note: could not install dataset-fashion-mnist; Fashion-MNIST steps fall back to MNIST-5k"; \
	else echo "note: Fashion-MNIST absent (apt-get install dataset-fashion-mnist as root to add it)"; fi

demo: setup
	$(BIN)/keyveil demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

test: setup lint
	$(BIN)/python -m pytest -q

# The documentation site, built offline into site/ (open site/index.html); warnings are errors.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Redraw the plots the docs show (docs/assets/*.png) from the committed results/*.json.
figures: $(STAMP)
	$(BIN)/python docs/figures.py

clean:
	rm -rf $(VENV) site .pytest_cache .ruff_cache
