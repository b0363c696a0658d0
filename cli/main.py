"""The ``swd-keras`` command: one small function per sub-command, no logic of its own."""

from __future__ import annotations

import os

import click

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="swd-keras")
def cli() -> None:
    """SWD-NAS for Keras 3: search cells, retrain, export and serve."""


def main() -> None:
    """Console-script entry point."""
    from cli import commands  # noqa: F401  (registers the sub-commands on `cli`)

    cli(prog_name="swd-keras")
