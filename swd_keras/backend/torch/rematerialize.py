"""Recomputation for ``swd_keras.rematerialize`` on PyTorch: ``torch.utils.checkpoint``
(through ``keras.remat``)."""

from __future__ import annotations

import keras

# `all` reaches 1.9 GB for a 1.6x slower step: the user's choice (docs/BENCHMARKS.md).
AUTO = "none"
"""What ``--remat auto`` recomputes on this backend."""
# PyTorch runs eagerly, so smaller groups only lower its peak (docs/BENCHMARKS.md).
MAX_GROUP_EDGES = 2

recompute = keras.remat


def state_mapping(variables):
    """None: a PyTorch step reads its variables themselves (autograd tracks them)."""
    return None
