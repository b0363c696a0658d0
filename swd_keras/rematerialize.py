"""Recomputing a layer's forward pass in the backward pass instead of keeping its
activations (gradient checkpointing), with its BatchNorm statistics updated once."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import keras
from keras import ops

from swd_keras import backend


def call_rematerialized(forward: Callable, tensors: Sequence, variables: Sequence,
                        statistics: Sequence):
    """``forward(*tensors)``, whose activations are recomputed for the gradient
    (the backend's ``recompute``: one custom gradient on TensorFlow, ``keras.remat``
    elsewhere, that is ``jax.checkpoint`` and torch's ``checkpoint``) instead of being
    kept from the forward pass to the backward pass.

    A recomputed forward would assign the BatchNorm moving statistics a second time
    (and, on JAX, leak values out of the checkpointed trace). So ``forward`` runs in a
    ``keras.StatelessScope`` that catches its assignments: the new statistics leave the
    recomputed function as outputs and are assigned here, once. The recomputation is
    the same arithmetic on the same inputs, so values and gradients do not change.

    Args:
        forward: the computation; it may assign ``statistics`` and nothing else.
        tensors: its positional arguments (tensors).
        variables: every variable ``forward`` reads (a JAX step's values of them are
            handed to the inner scope).
        statistics: the non-trainable variables ``forward`` assigns.

    Returns:
        ``forward(*tensors)``.

    Example:
        >>> bn = keras.layers.BatchNormalization()
        >>> x = keras.ops.ones((2, 4))
        >>> bn.build(x.shape)
        >>> y = call_rematerialized(lambda t: bn(t, training=True), [x], bn.variables,
        ...                         bn.non_trainable_variables)
    """
    own = _backend()
    mapping = own.state_mapping(variables)

    def run(*tensors):
        with keras.StatelessScope(state_mapping=mapping, initialize_variables=False) as scope:
            outputs = forward(*tensors)
        updated = [scope.get_current_value(v) for v in statistics]
        updated = [v.value if value is None else value for v, value in zip(statistics, updated)]
        return outputs, [ops.stop_gradient(value) for value in updated]

    outputs, updated = own.recompute(run)(*tensors)
    for variable, value in zip(statistics, updated):
        variable.assign(value)
    return outputs


def auto_setting() -> str:
    """What ``remat="auto"`` means on the running backend (its ``AUTO``)."""
    return _backend().AUTO


def group_size(edges: int) -> int:
    """Edges per recomputed group, for ``edges`` edges ready together: at most the
    backend's ``MAX_GROUP_EDGES`` (None: all of them)."""
    limit = _backend().MAX_GROUP_EDGES
    return edges if limit is None else min(edges, limit)


@functools.cache
def _backend():
    return backend.module("rematerialize")
