"""Shared test set-up: a hypothesis profile sized for CI on 2 cores, and a seeded random generator."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# deadline=None: timings on a shared 2-core CI machine are noise, not failures. max_examples stays modest so the
# property tests fit the suite's runtime budget; HYPOTHESIS_PROFILE=thorough runs many more when hunting bugs.
settings.register_profile("attnlab", deadline=None, max_examples=60, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "attnlab"))


@pytest.fixture
def rng():
    """A NumPy generator with a fixed seed: every test sees the same numbers on every run."""
    return np.random.default_rng(20240531)
