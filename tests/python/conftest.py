"""pytest fixtures for the mixpa Python tests (helpers live in oracle.py)."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
