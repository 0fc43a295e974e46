# `make demo` and `make test` set everything up on a fresh machine: a virtual environment
# in .venv, the pinned stack (requirements/), and the compiled ops featup_mmseg._ext (CPU
# kernels always; CUDA kernels too wherever nvcc is found, even without a GPU).
# `make test` builds the docs (warnings are errors) and the sdist and wheel (dist/; the
# suite installs the sdist into a scratch venv and trains through mim), runs the suite, and
# also tests the oldest supported stack (torch 2.1.2 + mmcv 2.1.0,
# requirements/torch21.txt) in .venv-torch21, on a copy of the sources in build/torch21 (the
# two stacks' extensions would overwrite each other in place). `make test-default` tests the
# default stack only.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

# torch locates the toolkit through `which nvcc`, which a wrapper script can hide: ask
# nvcc where it lives.
ifeq ($(CUDA_HOME),)
CUDA_HOME := $(shell command -v nvcc >/dev/null 2>&1 && \
	realpath "$$(nvcc --dryrun -c x.cu 2>&1 | sed -n 's/^#\$$ TOP=//p')" 2>/dev/null)
endif
export CUDA_HOME

LEGACY_OPS_ENV := FEATUP_MMSEG_LEGACY_OPS
DEPS_STAMP := $(VENV)/.featup-deps
EXT_STAMP := $(VENV)/.featup-ext
EXT_SOURCES := setup.py $(shell find csrc -type f)

OLDEST_VENV ?= .venv-torch21
OLDEST_PY := $(abspath $(OLDEST_VENV))/bin/python
OLDEST_SRC := build/torch21
OLDEST_DEPS_STAMP := $(OLDEST_VENV)/.featup-deps
OLDEST_EXT_STAMP := $(OLDEST_VENV)/.featup-ext
# the test files that run again with the ops behind torch.autograd.Function
LEGACY_OPS_TESTS := tests/test_ops.py tests/test_range_kernel_op.py tests/test_jbu_layers.py tests/test_feature_upsamplers.py \
	tests/test_neighbourhood_attention.py

.PHONY: install demo docs package test test-default test-oldest oldest-sources bench clean

install: $(EXT_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(OLDEST_PY):
	$(PYTHON) -m venv $(OLDEST_VENV)

# mmcv is built from source against the venv's torch (no wheels exist for it on PyPI). pip
# caches built wheels by source only, so its cache would hand one torch's build to another
# (undefined symbols in mmcv._ext): the wheel is built outside pip's cache and kept per torch
# version in WHEEL_CACHE instead. $(1): the venv's python, $(2): extra pip constraints.
WHEEL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/featup_mmseg/wheels
define install_mmcv
	wheels="$(WHEEL_CACHE)/torch-$$($(1) -c 'import torch; print(torch.__version__)')" && \
	if ! ls "$$wheels"/mmcv-*.whl >/dev/null 2>&1; then \
		MMCV_WITH_OPS=1 $(1) -m pip wheel --no-cache-dir --no-deps --no-build-isolation \
			-c requirements/build.txt $(2) -w "$$wheels" -r requirements/mmcv.txt; \
	fi && \
	$(1) -m pip install -c requirements/build.txt $(2) --find-links "$$wheels" \
		-r requirements/mmcv.txt
endef

# Every later install is constrained by build.txt: torch alone would pull a setuptools
# without pkg_resources, which mmcv's setup needs.
$(DEPS_STAMP): $(wildcard requirements/*.txt) | $(PY)
	$(PIP) install -r requirements/build.txt
	$(PIP) install -c requirements/build.txt -r requirements/torch.txt
	$(call install_mmcv,$(PY),)
	$(PIP) install -c requirements/build.txt -r requirements/runtime.txt -r requirements/tests.txt \
		-r requirements/docs.txt -r requirements/mim-deps.txt
	$(PIP) install -c requirements/build.txt --no-deps -r requirements/mim.txt
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) $(EXT_SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

# The oldest stack's own constraints come first: its torch, and numpy < 2 for mmcv's build.
$(OLDEST_DEPS_STAMP): $(wildcard requirements/*.txt) | $(OLDEST_PY)
	$(OLDEST_PY) -m pip install -r requirements/build.txt
	$(OLDEST_PY) -m pip install -c requirements/build.txt -r requirements/torch21.txt
	$(call install_mmcv,$(OLDEST_PY),-c requirements/torch21.txt)
	$(OLDEST_PY) -m pip install -c requirements/build.txt -c requirements/torch21.txt \
		-r requirements/runtime.txt -r requirements/tests.txt
	touch $@

# The working tree's files (tracked, and untracked but not ignored), copied with their times.
oldest-sources:
	mkdir -p $(OLDEST_SRC)
	find $(OLDEST_SRC) -type f ! -name '*.so' ! -path '$(OLDEST_SRC)/build/*' -delete
	git ls-files -co --exclude-standard | while read -r f; do [ -f "$$f" ] && echo "$$f"; \
		done | tar -cf - -T - | tar -xf - -C $(OLDEST_SRC)

$(OLDEST_EXT_STAMP): $(OLDEST_DEPS_STAMP) $(EXT_SOURCES) | oldest-sources
	cd $(OLDEST_SRC) && $(OLDEST_PY) -m pip install --no-build-isolation --no-deps -e .
	touch $@

demo: install
	$(PY) tools/demo.py

# -E: every page read again (docstrings included), so every warning shows each time
docs: install
	$(PY) -m sphinx -E -W --keep-going -q -b html docs docs/_build/html

# The sdist, and a wheel built from it (in a scratch folder, not in build/) against the
# installed torch; CPU kernels by default (the wheel is for the packaging test), FORCE_CUDA=1
# for CUDA kernels too.
package: install
	rm -rf dist
	FORCE_CUDA=$${FORCE_CUDA:-0} $(PY) -m build --no-isolation --outdir dist .

test: test-default test-oldest

test-default: docs package
	$(PY) -m pytest tests
	$(LEGACY_OPS_ENV)=1 $(PY) -m pytest $(LEGACY_OPS_TESTS)

test-oldest: oldest-sources $(OLDEST_EXT_STAMP)
	cd $(OLDEST_SRC) && $(OLDEST_PY) -m pytest tests

bench: install
	$(PY) tools/benchmark_ops.py

clean:
	rm -rf build dist docs/_build featup_mmseg/.mim featup_mmseg/_ext*.so *.egg-info \
		$(EXT_STAMP) $(OLDEST_EXT_STAMP)
