"""The commands import TensorFlow without the optional libraries it would pull in, and
hold back what it writes to stderr meanwhile (tests/test_quiet.py runs the commands)."""

import os
import subprocess
import sys

import pytest
from swd_keras.cli.tensorflow_import import OPTIONAL_IMPORTS, stderr_held_back

CHECK = """
import sys
from swd_keras.cli.tensorflow_import import import_tensorflow_without_optional_imports
import_tensorflow_without_optional_imports()
print(sorted(m for m in ("tensorflow", "keras", *{names!r}) if m in sys.modules))
import matplotlib, sklearn  # still importable afterwards
import tensorflow as tf
print(float(tf.reduce_sum(tf.ones(3))))
"""


def run(backend: str) -> list[str]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-c", CHECK.format(names=OPTIONAL_IMPORTS)],
                            env=env, capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split("\n")


@pytest.mark.parametrize("name", OPTIONAL_IMPORTS)
def test_the_optional_imports_are_installed_here(name):
    # Otherwise the test below would pass without showing anything.
    __import__(name)


def test_tensorflow_loads_without_its_optional_imports_and_they_stay_importable():
    loaded, total = run("tensorflow")[:2]
    assert loaded == str(["keras", "tensorflow"])
    assert float(total) == 3.0


def test_other_backends_import_nothing_here():
    loaded, _ = run("jax")[:2]
    assert loaded == "[]"


def test_held_back_stderr_is_dropped_and_written_out_only_when_the_block_fails(capfd):
    with stderr_held_back():
        os.write(2, b"a native library's start-up line\n")
    assert capfd.readouterr().err == ""

    with pytest.raises(ImportError, match="no such library"):
        with stderr_held_back():
            os.write(2, b"why the import failed\n")
            raise ImportError("no such library")
    assert capfd.readouterr().err == "why the import failed\n"

    os.write(2, b"after the block\n")  # file descriptor 2 is the original again
    assert capfd.readouterr().err == "after the block\n"
