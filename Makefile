# Set-up is part of every target: `.venv` is created on first use.
# torch/torchvision are pinned to the builds this project's CPU machines carry on disk;
# the package metadata itself does not pin them (GPU users bring their own CUDA build).
# any python3 >= 3.10; pick one with `make PY=python3.12 setup` (only used to create .venv)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
THREADS ?= 2

.PHONY: bench test setup clean floors

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

# The tests in TEST_WORKERS processes side by side (pytest-xdist; an idle worker takes queued tests from a busy
# one), TEST_THREADS torch threads each: with the defaults, the 2 cores of this project's CPU machines.
TEST_WORKERS ?= 2
TEST_THREADS ?= 1
test: $(BIN)/.installed
	$(BIN)/ruff check .
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

# Every dependency at its pyproject.toml floor (constraints-floors.txt) in its own venv under the oldest
# Python this project supports, then lint and the tests that exercise the dependencies. Needs PyPI:
# torch's Linux wheels there bring their CUDA libraries (about 3 GB, CPU-only machines included).
FLOORS_PY ?= python3.10
FLOORS_VENV ?= .venv-floors
FLOORS_TESTS ?= tests/test_config_runner.py tests/test_config_trainer.py tests/test_runner_records.py \
	tests/test_provenance.py tests/test_classifier.py tests/test_flops.py tests/test_flops_layers.py \
	tests/test_san_flops.py tests/test_datamodules.py tests/test_report_plots.py tests/test_benchmark.py \
	tests/test_fast_local_attention.py tests/test_fast_conv_path.py tests/test_fast_ops.py tests/test_resume.py
floors:
	test -x $(FLOORS_VENV)/bin/python || $(FLOORS_PY) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/pip install -q --upgrade pip
	$(FLOORS_VENV)/bin/pip install -q -c constraints-floors.txt -e '.[test,parquet]'
	$(FLOORS_VENV)/bin/ruff check .
	OMP_NUM_THREADS=$(THREADS) $(FLOORS_VENV)/bin/python -m pytest -q $(FLOORS_TESTS)

clean:
	rm -rf $(VENV) $(FLOORS_VENV) build *.egg-info
