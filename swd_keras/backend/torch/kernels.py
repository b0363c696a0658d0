"""PyTorch forms of the convolutions and pools of the fused candidate ops.

``swd_keras.fused_ops`` uses these on PyTorch instead of ``keras.ops``; they compute
the same values as ``ops.depthwise_conv(..., padding="same")``, a 1x1 ``ops.conv``,
``ops.max_pool(..., padding="same")`` and ``ops.average_pool(..., padding="valid")``.

Keras' PyTorch convolutions and pools copy a channels-last input to channels-first
and, for convolutions, back to PyTorch's ``channels_last`` memory format: two copies of
every input, and two of its gradient. A contiguous (b, h, w, c) tensor permuted to
(b, c, h, w) already *is* a ``channels_last`` tensor, so these call PyTorch on that
view: no copies, and PyTorch's channels-last kernels return a channels-last result
whose permutation back to (b, h, w, c) is again a view. A 1x1 convolution of
channels-last pixels is one matrix product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from keras import ops

from swd_keras.kernels import same_padding


def _channels_first(x):
    """(b, h, w, c) -> the (b, c, h, w) view PyTorch's kernels read (channels_last)."""
    return ops.convert_to_tensor(x).permute(0, 3, 1, 2)


def _channels_last(x):
    return x.permute(0, 2, 3, 1)


def _pad_same(x, span: int, strides: int, value: float = 0.0):
    """Pads a (b, c, h, w) view as ``padding="same"`` pads for a window of ``span``
    pixels: PyTorch's own (symmetric) padding where TF's rule is symmetric, else an
    explicit pad. Returns the input to use and PyTorch's ``padding`` argument."""
    (top, bottom), (left, right) = (same_padding(size, span, strides)
                                    for size in x.shape[2:])
    if top == bottom and left == right:
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom), value=value), (0, 0)


def depthwise_conv(x, kernel, strides: int = 1, dilation_rate: int = 1):
    """``ops.depthwise_conv(x, kernel, strides, "same", dilation_rate)``, channels last.

    Args:
        x: a (b, h, w, c) tensor.
        kernel: a (k, k, c, multiplier) depthwise kernel.
        strides: spatial stride.
        dilation_rate: kernel dilation.

    Returns:
        The (b, ceil(h / strides), ceil(w / strides), c * multiplier) convolution.
    """
    kernel = ops.convert_to_tensor(kernel)
    size, _, channels, multiplier = kernel.shape
    # Output channel c * multiplier + j reads input channel c, as in PyTorch's groups.
    weight = kernel.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, size, size)
    inputs, padding = _pad_same(_channels_first(x), dilation_rate * (size - 1) + 1, strides)
    return _channels_last(F.conv2d(inputs, weight, stride=strides, padding=padding,
                                   dilation=dilation_rate, groups=channels))


def pointwise_conv(x, kernel):
    """``ops.conv(x, kernel, padding="valid")`` for a (1, 1, c, c') kernel: the pixels'
    matrix product with ``kernel[0, 0]``."""
    return torch.matmul(ops.convert_to_tensor(x), ops.convert_to_tensor(kernel)[0, 0])


def max_pool(x, size: int, strides: int):
    """``ops.max_pool(x, size, strides, padding="same")``, channels last."""
    inputs, padding = _pad_same(_channels_first(x), size, strides, value=float("-inf"))
    return _channels_last(F.max_pool2d(inputs, size, strides, padding=padding))


def average_pool(x, size: int, strides: int):
    """``ops.average_pool(x, size, strides, padding="valid")``, channels last."""
    return _channels_last(F.avg_pool2d(_channels_first(x), size, strides))
