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

The commands also keep TensorFlow's start-up logging out of their output
(``import_tensorflow_quietly``). TensorFlow 2.21 loads two native libraries that each
carry their own copy of absl logging (``_pywrap_tensorflow_internal`` through the CPU
feature guard, then ``_pywrap_profiler_plugin``), and each writes ``WARNING: All log
messages before absl::InitializeLog() ...``, ``I0000 ... oneDNN custom operations are
on`` (on CPUs where TensorFlow enables oneDNN) and ``I0000 ... cudart_stub.cc ... Could
not find cuda drivers`` to file descriptor 2 before any log level is read:
``TF_CPP_MIN_LOG_LEVEL`` cannot silence them (``ABSL_MIN_LOG_LEVEL`` and
``GLOG_minloglevel`` do not either), only a redirect of the descriptor can. The first
device query then logs ``E0000 ... failed call to cuInit`` on a machine without a GPU;
that one does honour ``TF_CPP_MIN_LOG_LEVEL``, but only at 3, which would hide
TensorFlow's real errors too, so it is redirected as well.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

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


def import_tensorflow_quietly(verbose: bool = False) -> None:
    """Imports TensorFlow for a command (``import_tensorflow_without_optional_imports``
    on the TensorFlow backend, a plain import on the others, whose data pipelines are
    tf.data) and lists its devices, with what it writes meanwhile held back
    (``stderr_held_back``) and ``TF_CPP_MIN_LOG_LEVEL`` defaulting to 2, so that a
    command's output starts with its own first line.

    Args:
        verbose: let TensorFlow's start-up logging through, at its own log level
            (``TF_CPP_MIN_LOG_LEVEL`` as the environment sets it).

    Example:
        >>> import_tensorflow_quietly()  # prints nothing, unless the import fails
    """
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with contextlib.nullcontext() if verbose else stderr_held_back():
        import_tensorflow_without_optional_imports()
        import tensorflow as tf

        # The first device query initialises CUDA (cuInit) and logs its failure.
        # Listing devices starts no runtime: devices can still be hidden or configured.
        tf.config.list_physical_devices()


@contextlib.contextmanager
def stderr_held_back() -> Iterator[None]:
    """Sends whatever the block writes to file descriptor 2 (native libraries' logging
    included) to a temporary file, and writes it out to stderr only if the block raises,
    so that a failed import still shows TensorFlow's own account of it.

    Example:
        >>> with stderr_held_back():
        ...     import tensorflow
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError):  # no stderr (a detached process): nothing to hold
        yield
        return
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                text = held.read()
                while text:
                    text = text[os.write(2, text):]
