# Set-up is part of every target: `.venv` is created on first use.
# torch/torchvision are pinned to the builds this project's CPU machines carry on disk;
# the package metadata itself does not pin them (GPU users bring their own CUDA build).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
THREADS ?= 2

.PHONY: bench test setup clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e '.[test,parquet]'
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
