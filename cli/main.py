"""The ``swd-keras`` command: one small function per sub-command, no logic of its own."""

from __future__ import annotations

import os
import sys

import click
from swd_keras.cli.allocator import requested_backend, restart_with_allocator_setting
from swd_keras.cli.tensorflow_import import import_tensorflow_quietly

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


def _remember_verbose(ctx: click.Context, _param, value: bool) -> bool:
    # ctx.meta is shared by the group's context and the command's: either flag counts.
    ctx.meta["verbose"] = ctx.meta.get("verbose", False) or value
    return value


_VERBOSE = {
    "is_flag": True, "expose_value": False, "callback": _remember_verbose,
    "help": "Show TensorFlow's start-up logging (library loading, CPU features, GPU "
            "probing), which is held back otherwise.",
}
"""``--verbose``, read by ``select_backend``: on the group (``swd-keras --verbose
search``) and on every command (``swd-keras search --verbose``), one setting."""


class CommandGroup(click.Group):
    """The ``swd-keras`` group: every command added to it also takes ``--verbose``."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if not any(param.name == "verbose" for param in cmd.params):
            cmd.params.append(click.Option(["--verbose"], **_VERBOSE))
        super().add_command(cmd, name)


class Devices(click.ParamType):
    """``all`` or a positive device count, parsed once for every command."""

    name = "all|N"

    def convert(self, value, param, ctx):
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = str(value).strip().lower()
        if text == "all":
            return "all"
        if text.isdigit() and int(text) >= 1:
            return int(text)
        self.fail(f"{value!r} is not 'all' or a positive device count.", param, ctx)


def devices_option(command):
    """``--devices all|N``: the replicas the global batch is split over (the chief writes
    the run folder; docs/SCALE.md). Unset: 1 for a new run, the recorded value for a
    resumed one."""
    return click.option(
        "--devices", type=Devices(), default=None,
        help="Data-parallel over N devices (GPUs, or host devices from XLA_FLAGS="
             "--xla_force_host_platform_device_count=N), or all; with TF_CONFIG, every "
             "worker's [default: 1; a resumed run: its recorded value].")(command)


def select_backend(backend: str | None, *, data: bool = True) -> None:
    """Sets the Keras backend before Keras is imported, or says why it cannot; then
    imports TensorFlow quietly (``cli/tensorflow_import.py``: without its optional
    imports on the TensorFlow backend, its start-up logging held back unless
    ``--verbose``); then imports the command's ``--primitives-module`` modules.

    Args:
        backend: the Keras backend, or None for ``KERAS_BACKEND``'s (else keras.json's).
        data: whether the command reads data through tf.data; without, TensorFlow is
            imported only where it is Keras' backend.
    """
    if backend is not None:
        loaded = sys.modules.get("keras")
        if loaded is not None and loaded.backend.backend() != backend:
            raise click.UsageError(
                f"--backend {backend}: Keras is already loaded with the "
                f"{loaded.backend.backend()} backend in this process; "
                f"set KERAS_BACKEND={backend}.")
        os.environ["KERAS_BACKEND"] = backend
    context = click.get_current_context(silent=True)
    meta = {} if context is None else context.meta
    if data or requested_backend([], os.environ) == "tensorflow":
        import_tensorflow_quietly(verbose=meta.get("verbose", False))
    modules = meta.get("primitives_modules", ())
    if modules:
        from swd_keras.ops import import_primitives

        for module in modules:
            try:
                import_primitives(module)
            except ValueError as error:
                raise click.BadParameter(str(error), param_hint="--primitives-module") from None


@click.group(cls=CommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swd-keras")
@click.option("--verbose", **_VERBOSE)
def cli() -> None:
    """SWD-NAS for Keras 3: search cells, retrain, export and serve."""


def main() -> None:
    """Console-script entry point. A JAX command restarts itself once, before anything
    heavy is imported, with the allocator setting of ``cli/allocator.py``."""
    restart_with_allocator_setting(requested_backend(sys.argv[1:], os.environ))
    from swd_keras.cli import commands  # noqa: F401  (registers the sub-commands on `cli`)

    cli(prog_name="swd-keras")
