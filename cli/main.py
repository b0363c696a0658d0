"""The ``swd-keras`` command: one small function per sub-command, no logic of its own."""

from __future__ import annotations

import os
import sys

import click

from cli.allocator import requested_backend, restart_with_allocator_setting
from cli.tensorflow_import import import_tensorflow_without_optional_imports

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

BACKENDS = ("tensorflow", "jax", "torch")


def primitives_module_option(command):
    """``--primitives-module MODULE|FILE.py``: a module that registers users' own
    primitives, imported by ``select_backend`` once the backend is set (it imports
    Keras)."""

    def remember(ctx: click.Context, _param, value):
        ctx.meta["primitives_modules"] = value
        return value

    return click.option(
        "--primitives-module", "primitives_modules", multiple=True, expose_value=False,
        callback=remember, metavar="MODULE|FILE.py",
        help="Import this module first: it registers your own primitives "
             "(swd_keras.ops.register_primitive). Repeatable.")(command)


def select_backend(backend: str | None) -> None:
    """Sets the Keras backend before Keras is imported, or says why it cannot; on
    TensorFlow, then imports it without its optional imports (``cli/tensorflow_import.py``);
    then imports the command's ``--primitives-module`` modules."""
    if backend is not None:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != backend:
            raise click.UsageError(
                f"--backend {backend}: Keras is already loaded with the "
                f"{loaded.backend.backend()} backend in this process; "
                f"set KERAS_BACKEND={backend}.")
        os.environ["KERAS_BACKEND"] = backend
    import_tensorflow_without_optional_imports()
    context = click.get_current_context(silent=True)
    modules = () if context is None else context.meta.get("primitives_modules", ())
    if modules:
        from swd_keras.ops import import_primitives

        for module in modules:
            try:
                import_primitives(module)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--primitives-module") from None


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
