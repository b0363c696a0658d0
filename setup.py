"""The package list: ``swd_keras`` and its subpackages, and the command's code from the
repository's ``cli/`` folder installed as ``swd_keras.cli`` (no top-level ``cli`` in the
wheel). Everything else is in pyproject.toml."""

from setuptools import find_packages, setup

CLI_PACKAGES = find_packages(include=["cli", "cli.*"])

setup(
    packages=find_packages(include=["swd_keras", "swd_keras.*"])
    + [f"swd_keras.{name}" for name in CLI_PACKAGES],
    package_dir={f"swd_keras.{name}": name.replace(".", "/") for name in CLI_PACKAGES},
)
