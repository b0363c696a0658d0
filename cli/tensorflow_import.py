"""Importing TensorFlow without the optional libraries it pulls in.

``import tensorflow`` imports JAX whenever it is installed (for ``tf.lite``'s converter
utilities), and, through Keras' ``tf.keras`` shim, matplotlib (``keras.visualization``)
and scikit-learn (``keras.wrappers``). Each import is optional (guarded by ``except
ImportError``), and together they hold 0.19 GB of resident memory for the whole run in
this project's environment (docs/BENCHMARKS.md), none of which a search, a
training or an export uses. So the commands import TensorFlow with those three
modules marked absent, and unmark them at once: this package's own later imports of
matplotlib (genotype pictures) and scikit-learn (the digits set) load them as usual.
In that process only ``tf.lite``'s JAX conversion, ``keras.visualization`` and Keras'
scikit-learn wrappers are without them.
"""

from __future__ import annotations

import os
import sys

from swd_keras.cli.allocator import requested_backend

OPTIONAL_IMPORTS = ("jax", "matplotlib", "sklearn")


def import_tensorflow_without_optional_imports() -> None:
    """Imports TensorFlow (and with it Keras) with ``OPTIONAL_IMPORTS`` marked absent
    while it loads, if the Keras backend (``KERAS_BACKEND``, else ``keras.json``) is
    TensorFlow and TensorFlow is not loaded yet. Not for the other backends: Keras on
    JAX needs JAX, and they use TensorFlow, if at all, only for ``tf.data``."""
    if "tensorflow" in sys.modules or requested_backend([], os.environ) != "tensorflow":
        return
    blocked = [name for name in OPTIONAL_IMPORTS if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # `import name` now raises ImportError
    try:
        import tensorflow  # noqa: F401
    finally:
        for name in blocked:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
