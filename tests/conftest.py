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
