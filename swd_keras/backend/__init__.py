"""Everything that differs between Keras backends, one package per backend.

``swd_keras/backend/<name>/`` holds, for the backend ``<name>`` (``tensorflow``,
``jax``, ``torch``), the small interface the step algorithm is written against
(``trainer.py``) and the backend's own kernels. The rest of the package reaches them
through ``module``, which picks the running backend's package once.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import keras

NAMES = ("tensorflow", "jax", "torch")


def name() -> str:
    """The running Keras backend, one of ``NAMES``."""
    backend = keras.backend.backend()
    if backend not in NAMES:
        raise RuntimeError(f"swd_keras supports the Keras backends {NAMES}, not {backend!r}.")
    return backend


def module(part: str) -> ModuleType | None:
    """The running backend's module ``part`` (``"trainer"``, ...), or None where that
    backend has none."""
    qualified = f"swd_keras.backend.{name()}.{part}"
    try:
        return importlib.import_module(qualified)
    except ModuleNotFoundError as error:
        if error.name == qualified:
            return None
        raise
