"""Test set-up: the Keras backend comes from KERAS_BACKEND (TensorFlow by default).

Tests marked ``backend`` check numerics that must hold on every backend; the README's
test command runs them once per backend.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture
def backend() -> str:
    return keras.backend.backend()
