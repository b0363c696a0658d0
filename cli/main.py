"""The ``swd-keras`` command: one small function per sub-command, no logic of its own."""

from __future__ import annotations

import os
import sys

import click

from cli.allocator import requested_backend, restart_with_allocator_setting
from cli.tensorflow_import import import_tensorflow_without_optional_imports

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("tensorflow", "jax", "torch")


def select_backend(backend: str | None) -> None:
    """Sets the Keras backend before Keras is imported, or says why it cannot; on
    TensorFlow, then imports it without its optional imports (``cli/tensorflow_import.py``)."""
    if backend is not None:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != backend:
            raise click.UsageError(
                f"--backend {backend}: Keras is already loaded with the "
                f"{loaded.backend.backend()} backend in this process; "
                f"set KERAS_BACKEND={backend}.")
        os.environ["KERAS_BACKEND"] = backend
    import_tensorflow_without_optional_imports()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swd-keras")
def cli() -> None:
    """SWD-NAS for Keras 3: search cells, retrain, export and serve."""


def main() -> None:
    """Console-script entry point. A JAX command restarts itself once, before anything
    heavy is imported, with the allocator setting of ``cli/allocator.py``."""
    restart_with_allocator_setting(requested_backend(sys.argv[1:], os.environ))
    from cli import commands  # noqa: F401  (registers the sub-commands on `cli`)

    cli(prog_name="swd-keras")
