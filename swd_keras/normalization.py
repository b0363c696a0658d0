"""Non-affine batch normalization whose gradient is computed from its output.

Differentiated as written, ``(x - mean(x)) / sqrt(var(x) + eps)`` keeps its input ``x``
for the backward pass. Without scale and offset its output *is* the normalised input
``x_hat``, and the gradient needs nothing else:

    dL/dx = (g - mean(g) - x_hat * mean(g * x_hat)) / sqrt(var + eps)

(means over the batch and pixels, per channel; ``g = dL/dx_hat``). In a search edge the
output is kept anyway, for the gradient of the lower attention's weighting, so the
input need not be: 23 -> 19 MB per image of kept activations at the paper's settings
(docs/BENCHMARKS.md). Channels with ``mask`` 0 pass through unchanged, so that an
edge's features (its normalised ops and its identity) are one tensor, kept once.

Each backend states the custom gradient in its own terms
(``swd_keras/backend/<name>/normalization.py``); the formula is ``input_gradient``.
"""

from __future__ import annotations

import functools

import keras
from keras import ops

from swd_keras import backend, replicas


def normalize_from_output(x, scale, shift, mask):
    """``x * scale + shift`` for a channels-last ``x``, with the gradient of a batch
    normalization in training mode, taken from the output.

    Args:
        x: (b, h, w, c) input.
        scale: (c,) ``1 / sqrt(var + eps)`` of the batch statistics where ``mask`` is 1,
            1 elsewhere; gradient-free.
        shift: (c,) ``-mean * scale`` where ``mask`` is 1, 0 elsewhere; gradient-free.
        mask: (c,) 1 for the channels normalised by this batch's statistics, 0 for the
            channels passed through; None: all are normalised.

    Returns:
        ``x * scale + shift``; its gradient with respect to ``x`` is the batch norm's
        (with ``scale`` and ``shift`` depending on ``x``) on the masked channels and the
        identity's on the others; ``scale``, ``shift`` and ``mask`` get none.
    """
    return _backend_normalization().normalize_from_output(x, scale, shift, mask)


def batch_statistics(x):
    """The batch statistics of ``normalize_from_output``: per channel of a
    channels-last ``x``, the mean and (biased) variance over the global batch and the
    pixels, gradient-free (that gradient is ``normalize_from_output``'s).

    On one replica, by the backend's kernel where it has one (TensorFlow's fused batch
    norm, PyTorch's ``var_mean``: one op for both); else ``replicas.moments``.

    Args:
        x: a (b, ..., c) tensor.

    Returns:
        ``(mean, variance)``, each (c,).

    Example:
        >>> mean, variance = batch_statistics(keras.ops.ones((4, 8, 8, 16)))
    """
    fused = _one_replica_kernel("batch_statistics", x)
    return fused(x) if fused else _moments(ops.stop_gradient(x))


def batch_normalize(x, gamma, beta, epsilon: float):
    """Training-mode batch normalization of a channels-last ``x`` whose gradient runs
    through the batch statistics (the BatchNorms whose output is not kept).

    On one replica, by the backend's fused batch norm and its gradient where it has one
    (TensorFlow's ``FusedBatchNormV3``); else the statistics of ``batch_statistics``'
    kernels and ``x * scale + shift``, differentiated as written.

    Args:
        x: a (b, h, w, c) tensor.
        gamma, beta: (c,) scale and offset, or None (1 and 0).
        epsilon: added to the variance.

    Returns:
        ``(y, mean, variance)``: the normalised ``x``, and the batch mean and (biased)
        variance per channel (for the moving statistics).

    Example:
        >>> y, mean, variance = batch_normalize(keras.ops.ones((4, 8, 8, 16)), None,
        ...                                     None, 1e-5)
    """
    fused = _one_replica_kernel("batch_normalize", x)
    if fused:
        return fused(x, gamma, beta, epsilon)
    mean, variance = _moments(x)
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    shift = -mean * scale if beta is None else beta - mean * scale
    return x * scale + shift, mean, variance


def _moments(x):
    """Mean and biased variance over all axes but the last, with their gradient."""
    own = _one_replica_kernel("moments", x)
    return own(x) if own else replicas.moments(x, axes=tuple(range(len(x.shape) - 1)))


def _one_replica_kernel(name: str, x):
    """The backend's function ``name`` if it has one and it applies to ``x``: one
    replica, an image batch (b, h, w, c), a dtype batch-norm kernels take (not
    float64). Else None."""
    own = getattr(_backend_normalization(), name, None)
    applies = (len(x.shape) == 4 and replicas.num_replicas() == 1
               and keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16",
                                                                "float32"))
    return own if applies else None


@functools.cache
def _backend_normalization():
    return backend.module("normalization")


def input_gradient(output, scale, mask, grad):
    """dL/dx from the normalised ``output`` and ``grad`` = dL/d(output), the backward
    pass of every backend's ``normalize_from_output``.

    Args:
        output: (b, h, w, c) the forward output ``x * scale + shift``.
        scale: (c,) the forward ``scale``.
        mask: (c,) or None, as ``normalize_from_output``'s.
        grad: (b, h, w, c) the upstream gradient.

    Returns:
        (b, h, w, c) the gradient with respect to ``x``.
    """
    axes = tuple(range(len(grad.shape) - 1))
    # Means over the global batch, as the forward statistics are (replicas.moments);
    # each replica's ``grad`` is its share of the global loss's gradient.
    mean_grad, mean_projection = replicas.mean_over_replicas(
        [ops.mean(grad, axis=axes), ops.mean(grad * output, axis=axes)])
    if mask is not None:
        mean_grad, mean_projection = mean_grad * mask, mean_projection * mask
    return (grad - mean_grad - output * mean_projection) * scale
