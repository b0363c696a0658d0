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
"""

from __future__ import annotations

import functools

import keras
from keras import ops


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
    return _IMPLEMENTATIONS[keras.backend.backend()]()(x, scale, shift, mask)


def _input_gradient(output, scale, mask, grad):
    """dL/dx from the normalised ``output`` and ``grad`` = dL/d(output)."""
    axes = tuple(range(len(grad.shape) - 1))
    mean_grad = ops.mean(grad, axis=axes)
    mean_projection = ops.mean(grad * output, axis=axes)
    if mask is not None:
        mean_grad, mean_projection = mean_grad * mask, mean_projection * mask
    return (grad - mean_grad - output * mean_projection) * scale


@functools.cache
def _tensorflow():
    import tensorflow as tf

    def normalize(x, scale, shift, mask):
        @tf.custom_gradient
        def forward(x):
            output = x * scale + shift
            return output, lambda grad: _input_gradient(output, scale, mask, grad)

        return forward(x)

    return normalize


@functools.cache
def _jax():
    import jax

    @jax.custom_vjp
    def normalize(x, scale, shift, mask):
        return x * scale + shift

    def forward(x, scale, shift, mask):
        output = x * scale + shift
        return output, (output, scale, mask)

    def backward(residuals, grad):
        output, scale, mask = residuals
        zeros = jax.numpy.zeros_like(scale)
        return (_input_gradient(output, scale, mask, grad), zeros, zeros,
                None if mask is None else zeros)

    normalize.defvjp(forward, backward)
    return normalize


@functools.cache
def _torch():
    import torch

    class Normalize(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, scale, shift, mask):
            output = x * scale + shift
            ctx.save_for_backward(output, scale, mask)
            return output

        @staticmethod
        def backward(ctx, grad):
            # _input_gradient's formula, with one full-size temporary instead of four:
            # PyTorch runs eagerly, and under --remat these temporaries set the peak.
            output, scale, mask = ctx.saved_tensors
            axes = tuple(range(grad.dim() - 1))
            mean_grad = grad.mean(axes)
            mean_projection = (grad * output).mean(axes)
            if mask is not None:
                mean_grad, mean_projection = mean_grad * mask, mean_projection * mask
            result = torch.addcmul(grad, output, mean_projection, value=-1.0)
            return result.sub_(mean_grad).mul_(scale), None, None, None

    return Normalize.apply


_IMPLEMENTATIONS = {"tensorflow": _tensorflow, "jax": _jax, "torch": _torch}
