# torchkiln: every target sets itself up on a fresh machine (creates the venv if it is missing).
# The default lane uses torch 2.13.0, whose CPU wheel lies on local disk; the compat lane installs an older
# torch (a CUDA build from the registry that still runs on CPU) into its own venv.
PYTHON ?= python3
TORCH_DEFAULT := 2.13.0
VENV := .venv
TORCH ?= 2.11.0
COMPAT_VENV := .venv-torch$(TORCH)
MATRIX ?= 2.10.0 2.11.0 2.12.1 2.13.0 2.14.1
PYTEST_ARGS ?=
# Test processes per lane (pytest-xdist; tests/conftest.py says how the suite is split). The tests are CPU-bound
# compiles in child processes: more jobs than cores only adds contention. JOBS=0 runs in one process.
JOBS ?= 2
XDIST := $(if $(filter 0,$(JOBS)),-p no:xdist,-n $(JOBS) --dist loadscope)
LINT_PATHS := $(wildcard src tests tools benchmarks fuzz examples)
# pip's warnings about absent local index folders are noise on this machine, not errors.
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: demo test test-slow test-preload-stress test-compat test-zoo test-zoo-compat test-matrix lint bench clean venv

$(VENV)/.installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_QUIET) torch==$(TORCH_DEFAULT) 2>&1 | grep -v "^WARNING: Location" || true
	$(VENV)/bin/python -c "import torch" 
	$(VENV)/bin/pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	$(VENV)/bin/python -c "import torchkiln, transformers, diffusers, moto, s3fs"
	touch $@

venv: $(VENV)/.installed

.venv-torch%/.installed: pyproject.toml
	test -x .venv-torch$*/bin/python || $(PYTHON) -m venv .venv-torch$*
	.venv-torch$*/bin/pip install $(PIP_QUIET) torch==$* 2>&1 | grep -v "^WARNING: Location" || true
	.venv-torch$*/bin/python -c "import torch; assert torch.__version__.startswith('$*'), torch.__version__"
	.venv-torch$*/bin/pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	.venv-torch$*/bin/python -c "import torchkiln, transformers, diffusers, moto, s3fs"
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/torchkiln demo

# The default suite (torch 2.13): everything but the slow and GPU tests; ~15 minutes on 2 cores.
test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(XDIST) -m "not slow and not gpu" $(PYTEST_ARGS)

# The slow tests on torch 2.13: real transformers models (the zoo's CI subset), 16 racing processes, 200 loads,
# __main__ scripts, tensor-parallel ranks under gloo. The rest of the zoo (marker `zoo`) is `make test-zoo`.
test-slow: $(VENV)/.installed
	$(VENV)/bin/python -m pytest $(XDIST) -m "slow and not gpu and not zoo" \
		--deselect tests/test_preload.py::test_preload_stress_200 $(PYTEST_ARGS)

# 200 fresh processes that preload while three threads import the same modules, then compile (not in CI: the default
# suite runs 20 of them).
test-preload-stress: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/test_preload.py -k stress_200 -m slow $(PYTEST_ARGS)

# The compat lane: the fix-dependent and real-model tests on a torch where the builtins bug lives (tests/compat, and the
# tests/peer cases that prove a fix or the nested-function rule).
test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -m pytest $(XDIST) -m "(compat or models) and not gpu and not zoo" $(PYTEST_ARGS)

# Not in CI: every family of the model zoo (tests/zoo, docs/MODELS.md), compiled in one process, hit in another;
# ~40 minutes on 2 cores. test-zoo-compat runs it on the compat torch (TORCH=2.11.0 by default).
test-zoo: $(VENV)/.installed
	$(VENV)/bin/python -m pytest tests/zoo -m "not gpu" $(PYTEST_ARGS)

test-zoo-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -m pytest tests/zoo -m "not gpu" $(PYTEST_ARGS)

# Not in CI: every fix's status and a save/load round trip on each torch of the matrix -> docs/COMPAT.md.
# TORCH_DEFAULT runs in the default lane's $(VENV), not in a second venv holding the same torch.
MATRIX_PYTHONS := $(foreach v,$(MATRIX),$(if $(filter $(TORCH_DEFAULT),$(v)),$(VENV),.venv-torch$(v))/bin/python)
test-matrix: $(VENV)/.installed
	set -e; for v in $(filter-out $(TORCH_DEFAULT),$(MATRIX)); do $(MAKE) .venv-torch$$v/.installed; done
	$(VENV)/bin/python tools/compat_matrix.py $(MATRIX_PYTHONS) > docs/COMPAT-matrix.md

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy
	$(VENV)/bin/python tools/check_forbidden_imports.py

bench: $(VENV)/.installed
	$(VENV)/bin/torchkiln bench

clean:
	rm -rf $(VENV) .venv-torch* .pytest_cache .mypy_cache .ruff_cache
