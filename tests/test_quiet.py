"""The commands' output starts with their own first line: TensorFlow's and absl's start-up
logging is held back unless --verbose, and the commands' own errors still show. Each
case is the real `swd-keras` entry point in a subprocess (the in-process test runner has
TensorFlow loaded already, so it would prove nothing)."""

import os
import re
import subprocess
import sys

import pytest

# TensorFlow's start-up lines on a machine without a GPU (cli/tensorflow_import.py says
# where each comes from); a glog-style prefix covers the ones a GPU machine logs instead.
NOISE = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|oneDNN|cuda|cpu_feature_guard",
                   re.IGNORECASE | re.MULTILINE)
# A digits search that takes seconds: one cell of four parameter-free candidates (little
# to trace), one step, no XLA compilation.
TINY_SEARCH = ["--dataset", "digits", "--epochs", "1", "--layers", "1", "--channels", "4",
               "--k", "2", "--batch-size", "8", "--limit", "8", "--no-jit", "--primitives",
               "skip_connect,max_pool_3x3,avg_pool_3x3,none"]
# The command as the console script runs it, reporting whether it imported TensorFlow.
ENTRY = """
import sys
from swd_keras.cli.main import main
sys.argv = ["swd-keras", *sys.argv[1:]]
try:
    main()
finally:
    print("loaded:", sorted(m for m in ("tensorflow", "keras") if m in sys.modules))
"""


def swd_keras(*args, cwd, backend="tensorflow"):
    """Runs `swd-keras ARGS` with the environment a user has (no TF_CPP_MIN_LOG_LEVEL)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    env["KERAS_BACKEND"] = backend
    return subprocess.run([sys.executable, "-c", ENTRY, *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def noise(result) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines()
            if NOISE.search(line)]


def test_help_loads_no_backend_and_a_tiny_search_prints_only_its_own_lines(tmp_path):
    for args in (["--help"], ["search", "--help"]):
        result = swd_keras(*args, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "--verbose" in result.stdout
        assert result.stdout.rstrip().endswith("loaded: []"), args  # nothing heavy imported
        assert result.stderr == "" and noise(result) == [], args

    result = swd_keras("search", *TINY_SEARCH, "--output", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert noise(result) == []
    assert result.stdout.startswith("[1/3] loading digits ...")
    assert "collapse report" in result.stdout and (tmp_path / "run" / "genotype.json").is_file()


@pytest.mark.parametrize("args,backend,shown", [
    (["--verbose", "search", "--resume", "{empty}"], "tensorflow", True),
    (["search", "--resume", "{empty}", "--verbose"], "tensorflow", True),
    (["search", "--resume", "{empty}"], "jax", False),
], ids=["group-verbose", "command-verbose", "jax-quiet"])
def test_verbose_lets_tensorflow_logging_through_and_errors_always_show(tmp_path, args,
                                                                        backend, shown):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = swd_keras(*[arg.format(empty=empty) for arg in args], cwd=tmp_path,
                       backend=backend)
    assert result.returncode == 2
    assert f"Error: Invalid value for --resume: {empty} is not a search run folder " \
           f"(no config.json)." in result.stderr
    assert "loaded: ['keras', 'tensorflow']" in result.stdout  # TensorFlow did start
    if shown:
        lines = noise(result)
        assert any("absl::InitializeLog" in line for line in lines), result.stderr
        # An info-level line (oneDNN's where TensorFlow enables it on this CPU, else the
        # CUDA stub's): the held-back level gets through, not only warnings.
        assert any(line.startswith("I0000") for line in lines), result.stderr
    else:
        assert noise(result) == []
