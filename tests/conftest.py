import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, unseeded generator: every run draws new inputs."""
    return np.random.default_rng()


@pytest.fixture(params=[np.float32, np.float64], ids=["f32", "f64"])
def dtype(request):
    return request.param
