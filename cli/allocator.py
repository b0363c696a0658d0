"""The memory-allocator setting a backend runs faster with, applied when the process
starts (glibc reads it only then).

On the JAX backend, XLA's CPU runtime takes its buffers from ``malloc`` and returns
them every step, and glibc hands such large blocks back to the kernel; the next step
faults every page in again. In the paper's search step that was 1.67 million page
faults (6.4 GB) and 4.9 s of kernel time per step. With glibc's ``hugetlb`` tunable its
blocks are backed by transparent huge pages (2 MB): 4.7 thousand faults, and the step
went from 5.7 s to 2.6 s (docs/BENCHMARKS.md). TensorFlow keeps its own pool (no change)
and PyTorch's step got slower with it, so only JAX gets the setting.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence

HUGE_PAGES = "glibc.malloc.hugetlb=1"
_TUNABLE = HUGE_PAGES.split("=")[0]


def requested_backend(argv: Sequence[str], environ: Mapping[str, str]) -> str:
    """The Keras backend a command line will run: its ``--backend``, else what Keras
    itself would read (``KERAS_BACKEND``, then ``$KERAS_HOME/keras.json`` or
    ``~/.keras/keras.json``), else TensorFlow."""
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
    if environ.get("KERAS_BACKEND"):
        return environ["KERAS_BACKEND"]
    home = environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as f:
            return str(json.load(f).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


def allocator_environment(backend: str, environ: Mapping[str, str] | None = None,
                          platform: str = sys.platform) -> dict[str, str] | None:
    """The environment to start a process of ``backend`` with, or None to keep
    ``environ`` (``os.environ`` by default) as it is: JAX on Linux gets glibc's huge-page
    tunable added to ``GLIBC_TUNABLES``, unless that tunable is already set there (so
    a user's own choice, ``glibc.malloc.hugetlb=0`` included, stands)."""
    environ = os.environ if environ is None else environ
    tunables = environ.get("GLIBC_TUNABLES", "")
    if backend != "jax" or platform != "linux" or _TUNABLE in tunables:
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [tunables, HUGE_PAGES]))}


def restart_with_allocator_setting(backend: str) -> None:
    """Replaces this process by the same command line in ``allocator_environment``'s
    environment, if there is one to change to; otherwise returns. Call it before
    anything heavy is imported."""
    environ = allocator_environment(backend)
    if environ is None:
        return
    sys.stdout.flush()  # what was printed so far would be lost with the process
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, environ)
