"""PyTorch: one device. The bilevel step's two optimizers and its cross-replica top-k
and BatchNorm statistics are not written for ``DistributedDataParallel``, so more than
one device is refused (``swd_keras.distribute``)."""

from __future__ import annotations

import numpy as np
from keras import ops


def count_replicas(devices: int | str) -> int:
    """1 for ``"all"`` or 1; a ValueError for more."""
    if devices == "all" or devices == 1:
        return 1
    raise ValueError(f"--devices {devices}: data-parallel search runs on the tensorflow and "
                     f"jax backends; on torch it runs on one device (--devices 1, or "
                     f"--backend jax / tensorflow).")


def is_chief() -> bool:
    """Always: PyTorch runs in one process."""
    return True


def to_numpy(value) -> np.ndarray:
    """A variable's value as NumPy."""
    return ops.convert_to_numpy(value)
