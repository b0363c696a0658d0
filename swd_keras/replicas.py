"""Reductions over the replicas of a data-parallel step, so that a step on N replicas
equals a step on one device with the same global batch.

Under a ``tf.distribute`` strategy each replica runs the step on its local batch;
whatever the step computes from the whole batch (the batch-summed upper attention
before ``top_k``, SPEC §2.2; BatchNorm statistics; the edge weights; the gradient
norm for clipping) must be reduced over the replicas. Each function here is the
identity, with no extra op, on one replica, and on JAX (whose data-parallel step is
one program over the global batch) and PyTorch (one device); the backend's
``replicas`` module (``swd_keras/backend/<name>/replicas.py``) says how many replicas
the current step has and reduces across them.

Local batches are assumed equal in size (the command line refuses a global batch that
does not split evenly), so the mean of the replicas' local means is the global mean.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from keras import ops

from swd_keras import backend


@functools.cache
def _backend():
    return backend.module("replicas")


def num_replicas() -> int:
    """The number of replicas that run the current step together.

    Returns:
        The replicas in sync of the current ``tf.distribute`` replica context; 1
        outside one, in cross-replica context, and on JAX and PyTorch.

    Example:
        >>> num_replicas()
        1
    """
    return _backend().num_replicas()


def batch_norm_synchronized() -> bool:
    """Whether a Keras ``BatchNormalization`` made now needs cross-replica statistics
    (``synchronized=True``).

    True only when it is made under a ``tf.distribute`` strategy with more than one
    replica; on one replica Keras' synchronised path would take single-pass
    statistics, which are not bit-for-bit the default's.

    Returns:
        The ``synchronized`` argument for the layer.

    Example:
        >>> bn = keras.layers.BatchNormalization(synchronized=batch_norm_synchronized())
    """
    return _backend().batch_norm_synchronized()


def sum_over_replicas(x):
    """``x`` summed over the replicas of the current step.

    Args:
        x: a tensor or a list of tensors (reduced together, in one all-reduce).

    Returns:
        The same structure, each tensor the sum of its values on all replicas; ``x``
        itself on one replica.

    Example:
        >>> score = sum_over_replicas(ops.sum(attention, axis=0))
    """
    return x if num_replicas() == 1 else _backend().all_reduce("sum", x)


def mean_over_replicas(x):
    """``x`` averaged over the replicas of the current step: ``sum_over_replicas``
    divided by their number, in the same one all-reduce.

    Example:
        >>> edge_weights = mean_over_replicas(edge_weights)
    """
    return x if num_replicas() == 1 else _backend().all_reduce("mean", x)


def moments(x, axes: Sequence[int]):
    """Mean and variance of ``x`` over ``axes`` and over the global batch.

    On one replica this is ``keras.ops.moments`` (two passes: the variance of the
    centred values). Across replicas it is the all-reduced mean of the local mean and
    of the local mean of squares, ``var = E[x^2] - E[x]^2`` (clipped at 0), one
    all-reduce for both, as Keras' synchronised BatchNorm computes it.

    Args:
        x: a tensor whose batch axis is in ``axes``.
        axes: the axes to reduce.

    Returns:
        ``(mean, variance)``, with ``axes`` removed.

    Example:
        >>> mean, variance = moments(ops.ones((4, 8, 8, 16)), axes=(0, 1, 2))
    """
    if num_replicas() == 1:
        return ops.moments(x, axes=axes)
    axes = tuple(axes)
    mean, mean_square = mean_over_replicas(
        [ops.mean(x, axis=axes), ops.mean(ops.square(x), axis=axes)])
    return mean, ops.maximum(mean_square - ops.square(mean), 0.0)


def _squared_norms(tensors: Sequence):
    return ops.stack([ops.sum(ops.square(t)) for t in tensors])


def clip_by_global_norm(grads: Sequence, clip_norm: float) -> list:
    """``grads`` scaled so that the gradient of the whole step (summed over the
    replicas) has a global norm of at most ``clip_norm``.

    The factor is Keras' ``global_clipnorm`` formula, ``clip_norm * min(1 / norm,
    1 / clip_norm)`` (NaN where the norm is not finite), with ``norm`` the global norm
    of the all-replica gradient sum, so each replica's share of the gradient is scaled
    by the same factor and their sum is clipped as one gradient; one device stays
    bit-for-bit Keras' own clipping. The squared norms are the backend's
    ``squared_norms`` where it has one (TensorFlow: one kernel per gradient). Across
    replicas this costs an all-reduce of the gradients before the optimizer's own.

    Args:
        grads: the gradients; ``None`` entries are kept and not counted (all
            ``None``: returned as they are).
        clip_norm: the largest global norm, > 0.

    Returns:
        The scaled gradients, ``None`` where ``grads`` has ``None``.

    Example:
        >>> clipped = clip_by_global_norm([ops.ones((3,)) * 4.0], 1.0)
    """
    present = [g for g in grads if g is not None]
    if not present:
        return list(grads)
    total = sum_over_replicas(present)
    squared_norms = getattr(_backend(), "squared_norms", _squared_norms)
    norm = ops.sqrt(ops.sum(squared_norms(total)))
    scale = clip_norm * ops.minimum(1.0 / norm, 1.0 / clip_norm)
    scale = scale + (norm - norm)
    return [None if g is None else g * scale for g in grads]
