"""Fixtures for the differ tests (their stores come from the shared ``make_store`` in tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
