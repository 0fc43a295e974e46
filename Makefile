# `make demo` and `make test` set everything up on a fresh machine: a virtual environment
# in .venv, the pinned stack (requirements/), and the compiled ops featup_mmseg._ext (CPU
# kernels always; CUDA kernels too wherever nvcc is found, even without a GPU).
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

DEPS_STAMP := $(VENV)/.featup-deps
EXT_STAMP := $(VENV)/.featup-ext
EXT_SOURCES := setup.py $(shell find csrc -type f)

.PHONY: install demo test bench clean

install: $(EXT_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Every later install is constrained by build.txt: torch alone would pull a setuptools
# without pkg_resources, which mmcv's setup needs.
$(DEPS_STAMP): $(wildcard requirements/*.txt) | $(PY)
	$(PIP) install -r requirements/build.txt
	$(PIP) install -c requirements/build.txt -r requirements/torch.txt
	MMCV_WITH_OPS=1 $(PIP) install -c requirements/build.txt --no-build-isolation \
		-r requirements/mmcv.txt
	$(PIP) install -c requirements/build.txt -r requirements/runtime.txt -r requirements/tests.txt
	touch $@

$(EXT_STAMP): $(DEPS_STAMP) $(EXT_SOURCES)
	$(PIP) install --no-build-isolation --no-deps -e .
	touch $@

demo: install
	$(PY) tools/demo.py

test: install
	$(PY) -m pytest tests

bench: install
	$(PY) tools/benchmark_ops.py

clean:
	rm -rf build featup_mmseg/_ext*.so *.egg-info $(EXT_STAMP)
