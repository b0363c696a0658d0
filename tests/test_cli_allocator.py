"""The allocator setting a JAX command starts with (cli/allocator.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

import pytest
from swd_keras.cli.allocator import HUGE_PAGES, allocator_environment, requested_backend


@pytest.mark.parametrize("argv,environ,want", [
    (["search", "--backend", "jax", "--epochs", "1"], {"KERAS_BACKEND": "torch"}, "jax"),
    (["search", "--backend=torch"], {"KERAS_BACKEND": "jax"}, "torch"),
    (["search", "--epochs", "1"], {"KERAS_BACKEND": "jax"}, "jax"),
    (["search", "--backend"], {}, "tensorflow"),  # click reports the missing value
])
def test_requested_backend_reads_the_flag_then_the_environment(argv, environ, want, tmp_path):
    environ = {"KERAS_HOME": str(tmp_path), **environ}
    assert requested_backend(argv, environ) == want


def test_requested_backend_falls_back_to_keras_json_as_keras_does(tmp_path):
    assert requested_backend([], {"KERAS_HOME": str(tmp_path)}) == "tensorflow"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert requested_backend([], {"KERAS_HOME": str(tmp_path)}) == "jax"
    (tmp_path / "keras.json").write_text("{not json")
    assert requested_backend([], {"KERAS_HOME": str(tmp_path)}) == "tensorflow"


def test_only_jax_on_linux_gets_huge_pages_and_a_users_setting_stands():
    base = {"PATH": "/bin"}
    assert allocator_environment("jax", base, "linux") == {**base, "GLIBC_TUNABLES": HUGE_PAGES}
    other = {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=128"}
    assert allocator_environment("jax", other, "linux")["GLIBC_TUNABLES"] == (
        "glibc.malloc.trim_threshold=128:" + HUGE_PAGES)
    for backend, platform in [("tensorflow", "linux"), ("torch", "linux"), ("jax", "darwin")]:
        assert allocator_environment(backend, base, platform) is None
    assert allocator_environment("jax", {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"},
                                 "linux") is None


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's tunable: Linux only")
def test_a_jax_command_restarts_once_with_the_setting(tmp_path):
    # The entry point replaces the process: the same command line runs again, in the
    # new environment, and does not restart a second time.
    code = ("import os, sys; print('tunables:', os.environ.get('GLIBC_TUNABLES'));"
            "sys.argv = ['swd-keras', '--version'];"
            "from swd_keras.cli.main import main; main()")
    environ = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**environ, "KERAS_BACKEND": "jax"}, timeout=120)
    assert result.returncode == 0, result.stderr
    printed_version = f"swd-keras, version {version('swd-keras')}"
    assert result.stdout.splitlines() == [
        "tunables: None", f"tunables: {HUGE_PAGES}", printed_version]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**environ, "KERAS_BACKEND": "tensorflow"}, timeout=120)
    assert result.stdout.splitlines() == ["tunables: None", printed_version]
