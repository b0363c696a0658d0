"""Test set-up: the Keras backend comes from KERAS_BACKEND (TensorFlow by default).

Tests marked ``backend`` check numerics that must hold on every backend; the README's
test command runs them once per backend.
"""

import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XLA compiling a search step on a CPU takes most of a JAX test's time, and many tests
# compile the same tiny programs: one persistent compilation cache per test run, shared
# by the xdist workers and the tests' subprocesses (which inherit these variables), and
# removed when the run ends (pytest_sessionfinish).
_JAX_CACHE = os.environ.setdefault(  # the xdist workers inherit the controller's
    "SWD_KERAS_TEST_JAX_CACHE",
    os.path.join(tempfile.gettempdir(), f"swd-keras-jax-cache-{os.getpid()}"))
if os.environ["KERAS_BACKEND"] == "jax":
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# LLVM's expensive optimisation passes take a sixth of a compile-bound test's time and
# change none of the tests' values (a lower backend optimisation level does:
# docs/DESIGN.md, "Tests"). Every XLA program of the run goes without them, the JAX
# subprocesses of the TensorFlow run included.
_FAST_COMPILE = "--xla_llvm_disable_expensive_passes=true"
if _FAST_COMPILE not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

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


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):  # the controller, after every worker
        shutil.rmtree(_JAX_CACHE, ignore_errors=True)
