"""Replicas on JAX, for ``swd_keras.replicas``: one, always.

Under ``keras.distribution.DataParallel`` Keras jit-compiles the step as one SPMD
program over the global batch, sharded across the devices: every batch mean, sum and
``top_k`` already sees the whole batch, and XLA inserts the collectives itself. The
step's code needs no reduction of its own.
"""

from __future__ import annotations


def num_replicas() -> int:
    """1: the step is one program over the global batch (see the module docstring)."""
    return 1


def batch_norm_synchronized() -> bool:
    """False: batch statistics are global already (see the module docstring)."""
    return False
