"""Fixtures shared by the unit tests (the session harness is ../conftest.py)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_split():
    """Digits with a stratified held-out test set, shared by the tests that need real data."""
    from fedutils import data

    x, y = data.load_digits()
    return data.train_test_split(x, y, test_fraction=0.25, seed=0)
