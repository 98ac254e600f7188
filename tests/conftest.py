"""Fixtures shared by several test files."""
from __future__ import annotations

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
