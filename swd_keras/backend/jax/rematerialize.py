"""Recomputation for ``swd_keras.rematerialize`` on JAX: ``jax.checkpoint`` (through
``keras.remat``), inside the step's ``keras.StatelessScope``."""

from __future__ import annotations

import keras

# XLA's buffer assignment, not the kept activations, sets a JAX step's peak.
AUTO = "none"
"""What ``--remat auto`` recomputes on this backend."""
# XLA plans the step's buffers as a whole: whole groups.
MAX_GROUP_EDGES = None

recompute = keras.remat


def state_mapping(variables):
    """The values the running step holds for ``variables`` (read through its
    ``keras.StatelessScope``), for the recomputed function's own scope, whose unmapped
    variables would read their stored values instead."""
    return [(v, v.value) for v in variables]
