"""Fixtures shared by several test files."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny models gain nothing from a second thread, and on a busy
    2-core machine OpenMP's spinning threads slow small runs by an order of magnitude (and bitwise
    comparisons need a fixed thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ running in parallel (pytest-xdist)
# `make test` runs the suite in worker processes (pytest -n N --dist worksteal): a module-scoped fixture is then
# built by every worker that runs one of its tests, and tests in different workers overlap. shared_dir() is one
# directory for the whole run, seen by every worker, for what must happen once or one at a time.

def shared_dir(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # workers' basetemps share a parent


@contextlib.contextmanager
def exclusive(tmp_path_factory, name: str):
    """Held by one test of the run at a time, across workers (an flock on a file in shared_dir)."""
    with open(shared_dir(tmp_path_factory) / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def once_per_run(tmp_path_factory, name: str, compute):
    """compute() (a JSON value) run once in the whole run: the first worker to ask computes it while the others
    wait, then all read the same value. Use for an expensive module fixture's raw result; checks stay in the
    fixture, so every worker still asserts on it."""
    path = shared_dir(tmp_path_factory) / f"{name}.json"
    with exclusive(tmp_path_factory, name):
        if not path.exists():
            path.write_text(json.dumps(compute()))
        return json.loads(path.read_text())


@pytest.fixture(scope="session")
def run_once(tmp_path_factory):
    """once_per_run(tmp_path_factory, name, compute) as a fixture: run_once(name, compute)."""
    return lambda name, compute: once_per_run(tmp_path_factory, name, compute)


@pytest.fixture
def ddp_alone(tmp_path_factory):
    """One CPU DDP launch at a time: each starts two gloo processes that rendezvous on a free port, found
    while another launch could take the same one, and two 2-process runs on 2 cores would crawl."""
    with exclusive(tmp_path_factory, "ddp"):
        yield
