"""Shared fixtures. Seeds come from function-scoped generators; nothing is seeded at import time.

Note [Randomized statistical tests]: tests that compare Monte Carlo averages with exact values
use fixed seeds and tolerances of at least 5 standard errors (estimated from the samples), so a
correct implementation fails with probability below 1e-6 per comparison for a fresh seed.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def gen() -> torch.Generator:
    """A torch generator with a fixed seed, fresh for every test."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _seed_torch():
    """Seed the global RNG per test so tests are independent of their order."""
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _one_thread():
    """Run every test on one intra-op thread: the tests' tensors are small, and with 2 threads on a
    loaded 2-core machine small ops (convolutions above all) ran 10-50x slower (measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
