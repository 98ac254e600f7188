# Set-up is part of every target: `.venv` is created on first use.
# torch/torchvision are pinned to the builds this project's CPU machines carry on disk;
# the package metadata itself does not pin them (GPU users bring their own CUDA build).
# any python3 >= 3.10; pick one with `make PY=python3.12 setup` (only used to create .venv)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
THREADS ?= 2

.PHONY: bench test setup clean

$(BIN)/.installed: pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' || \
		{ echo "make: $(PY) is older than Python 3.10; run e.g. make PY=python3.11"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test,parquet]'
	@# build the C++ Stage II kernels now (a minute, cached), not inside the first benchmark cell
	$(BIN)/python -c 'from modules import _fast; _fast.build_all()' || echo "make: C++ kernels not built; the torch fallback will run"
	touch $@

setup: $(BIN)/.installed

# The main job: the default benchmark matrix (configs/default.yaml), then its report. Rerunning resumes.
BENCH_CONFIG ?= configs/default.yaml
BENCH_OUT ?= results/default
bench: $(BIN)/.installed
	OMP_NUM_THREADS=$(THREADS) $(BIN)/acmix-bench run $(BENCH_CONFIG) --out $(BENCH_OUT)

test: $(BIN)/.installed
	$(BIN)/ruff check .
	OMP_NUM_THREADS=$(THREADS) $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
