# Two entry points do all the setup on a fresh Debian machine:
#   make serve   build the demo model repository if it is missing, then start the gateway
#   make serve-triton   the same, with a real Triton server (nvidia-pytriton) behind the gateway
#   make test    lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
# Debian packages: espeak-ng and flite synthesise the speech robustness sets and test audio;
# pocketsphinx-testdata holds the real recordings speech is scored on; prometheus runs in
# the monitoring tests; the *-l10n/iso-codes packages carry the gettext catalogs of the
# translation corpus (only needed to re-extract it).
DEB_PACKAGES := espeak-ng flite pocketsphinx-testdata prometheus iso-codes

.PHONY: setup deps venv serve serve-triton repo test lint typecheck unit clean

setup: deps venv

deps:
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: a looser request would fetch a multi-GB CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

repo: setup
	$(BIN)/builders build-demo --if-missing

serve: repo
	$(BIN)/builders report
	$(BIN)/gateway serve --repository model_repo --host $(HOST)

# Triton (python backend, on 127.0.0.1:8010-8012) serves the python-backend flavour of the
# demo repository; the gateway in front of it runs with --backend triton on 8000/8001.
serve-triton: repo
	$(BIN)/builders report
	$(BIN)/builders serve-triton --repository model_repo --host $(HOST) $(SERVE_TRITON_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

unit: venv
	$(BIN)/pytest -q tests/unit

test: setup lint typecheck
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
