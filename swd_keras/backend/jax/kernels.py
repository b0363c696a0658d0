"""JAX forms of the depthwise convolution and the max pool of the fused candidate ops.

``swd_keras.fused_ops`` uses these on JAX instead of ``keras.ops``; both compute the
same values as ``ops.depthwise_conv(..., padding="same")`` and
``ops.max_pool(..., padding="same")``, with gradients that XLA compiles into fast
elementwise loops on a CPU (measurements: ``bench/depthwise.py``, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax import lax
from keras import ops

from swd_keras.kernels import same_padding


def depthwise_conv(x, kernel, strides: int = 1, dilation_rate: int = 1):
    """``ops.depthwise_conv(x, kernel, strides, "same", dilation_rate)``, channels last,
    as a sum of the kernel's shifted, per-channel products with a gradient of the same
    form (``shifted_products``).

    XLA's CPU kernel-gradient of a grouped convolution is pathological (seconds where
    the forward pass takes milliseconds); shifted products fuse into elementwise loops
    (docs/BENCHMARKS.md).

    Args:
        x: a (b, h, w, c) tensor with static h and w.
        kernel: a (k, k, c, multiplier) depthwise kernel.
        strides: spatial stride.
        dilation_rate: kernel dilation.

    Returns:
        The (b, ceil(h / strides), ceil(w / strides), c * multiplier) convolution.
    """
    size, _, _, multiplier = kernel.shape
    if multiplier > 1:  # output channel c * multiplier + j reads input channel c
        x = ops.repeat(x, multiplier, axis=-1)
    kernel = ops.reshape(kernel, (size, size, -1))
    span = dilation_rate * (size - 1) + 1
    h, w = x.shape[1], x.shape[2]
    x = ops.pad(x, ((0, 0), same_padding(h, span, strides), same_padding(w, span, strides),
                    (0, 0)))
    return shifted_products(strides, dilation_rate, -(-h // strides),
                            -(-w // strides))(x, kernel)


def _windows(padded, size: int, strides: int, dilation: int, out_h: int, out_w: int):
    """(i, j, the (b, out_h, out_w, c) pixels that kernel tap (i, j) multiplies)."""
    for i in range(size):
        for j in range(size):
            top, left = i * dilation, j * dilation
            yield i, j, padded[:, top:top + (out_h - 1) * strides + 1:strides,
                               left:left + (out_w - 1) * strides + 1:strides, :]


def _sum_of_products(padded, kernel, strides, dilation, out_h, out_w):
    total = 0
    for i, j, window in _windows(padded, kernel.shape[0], strides, dilation, out_h, out_w):
        total = total + window * kernel[i, j]
    return total


@functools.cache
def shifted_products(strides: int, dilation: int, out_h: int, out_w: int):
    """``(padded input, (k, k, c) kernel) -> output``: the shifted products, with a
    gradient written in the same form.

    JAX's own gradient of the products pads each tap's output gradient back to the
    input's size and adds them up (one full-size pad per tap); here the input gradient
    is one correlation of the output gradient with the flipped kernel, which takes less
    time (docs/BENCHMARKS.md).
    """

    @jax.custom_vjp
    def products(padded, kernel):
        return _sum_of_products(padded, kernel, strides, dilation, out_h, out_w)

    def forward(padded, kernel):
        return products(padded, kernel), (padded, kernel)

    def backward(residuals, grad):
        padded, kernel = residuals
        size, (h, w) = kernel.shape[0], padded.shape[1:3]
        edge = (size - 1) * dilation
        # The output gradient at its input positions (strides - 1 zeros between
        # pixels), zero-bordered so that every input pixel sees all taps.
        spread = lax.pad(grad, jax.numpy.zeros((), grad.dtype), [
            (0, 0, 0), (edge, h - (out_h - 1) * strides - 1, strides - 1),
            (edge, w - (out_w - 1) * strides - 1, strides - 1), (0, 0, 0)])
        grad_padded = _sum_of_products(spread, kernel[::-1, ::-1], 1, dilation, h, w)
        taps = {(i, j): ops.sum(window * grad, axis=(0, 1, 2)) for i, j, window in
                _windows(padded, size, strides, dilation, out_h, out_w)}
        grad_kernel = ops.stack([ops.stack([taps[i, j] for j in range(size)])
                                 for i in range(size)])
        return grad_padded, grad_kernel

    products.defvjp(forward, backward)
    return products


def max_pool(x, size: int, strides: int):
    """``ops.max_pool(x, size, strides, padding="same")``, channels last, as the running
    maximum of the window's shifted pixels, which also records which tap won
    (``running_max_pool``).

    JAX differentiates a max pool by packing values and tangents into one
    reduce-window, which is slower on a CPU than this form (docs/BENCHMARKS.md).

    Args:
        x: a (b, h, w, c) tensor with static h and w.
        size: pooling window.
        strides: spatial stride.

    Returns:
        The (b, ceil(h / strides), ceil(w / strides), c) pool.
    """
    h, w = x.shape[1], x.shape[2]
    padded = ops.pad(x, ((0, 0), same_padding(h, size, strides),
                         same_padding(w, size, strides), (0, 0)), constant_values=-np.inf)
    return running_max_pool(size, strides, *padded.shape[1:3])(padded)


@functools.cache
def running_max_pool(size: int, strides: int, h: int, w: int):
    """``(b, h, w, c) padded input -> output`` of a max pool. Its gradient goes to the
    first window pixel (in row-major order) that holds the maximum, as TensorFlow's
    does; the only residual is that pixel's tap index, one byte per output value for
    windows up to 11x11."""
    jnp = jax.numpy
    index = jnp.int8 if size * size <= 128 else jnp.int16
    out_h, out_w = (h - size) // strides + 1, (w - size) // strides + 1

    def forward(padded):
        out = winner = None
        for tap, (_, _, window) in enumerate(
                _windows(padded, size, strides, 1, out_h, out_w)):
            if out is None:
                out, winner = window, jnp.zeros(window.shape, index)
                continue
            larger = window > out
            out = jnp.where(larger, window, out)
            winner = jnp.where(larger, index(tap), winner)
        return out, winner

    @jax.custom_vjp
    def pool(padded):
        return forward(padded)[0]

    def backward(winner, grad):
        zero, total = jnp.zeros((), grad.dtype), 0
        for tap in range(size * size):
            i, j = divmod(tap, size)
            # Output pixel (y, x) of this tap reads padded pixel (i + s*y, j + s*x).
            total = total + lax.pad(jnp.where(winner == tap, grad, zero), zero, [
                (0, 0, 0), (i, h - i - (out_h - 1) * strides - 1, strides - 1),
                (j, w - j - (out_w - 1) * strides - 1, strides - 1), (0, 0, 0)])
        return (total,)

    pool.defvjp(forward, backward)
    return pool
