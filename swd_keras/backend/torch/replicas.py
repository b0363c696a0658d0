"""Replicas on PyTorch, for ``swd_keras.replicas``: one, always.

The search runs on one PyTorch device (``--devices`` refuses more): the step's batch
is the global batch.
"""

from __future__ import annotations


def num_replicas() -> int:
    """1: one device, so the local batch is the global batch."""
    return 1


def batch_norm_synchronized() -> bool:
    """False: one device, nothing to synchronise."""
    return False
