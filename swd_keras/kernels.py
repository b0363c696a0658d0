"""The convolutions and pools of the candidate ops and of the cells' preprocessing, by
the running backend's own kernel where ``swd_keras/backend/<name>/kernels.py`` has one,
else by ``keras.ops``.

Each computes the same values as the ``keras.ops`` call its docstring names, channels
last; the backends' forms differ in speed and memory only (docs/BENCHMARKS.md).
``same_padding`` is TensorFlow's ``padding="same"`` rule, which the backends' forms
pad by.
"""

from __future__ import annotations

from keras import ops

from swd_keras import backend


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """The (before, after) padding of ``padding="same"`` along one axis (TF's rule)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _keras_depthwise_conv(x, kernel, strides: int = 1, dilation_rate: int = 1):
    return ops.depthwise_conv(x, kernel, strides=strides, padding="same",
                              dilation_rate=dilation_rate)


def _keras_max_pool(x, size: int, strides: int):
    return ops.max_pool(x, size, strides, padding="same")


def _keras_pointwise_conv(x, kernel):
    return ops.conv(x, kernel, padding="valid")


def _keras_average_pool(x, size: int, strides: int):
    return ops.average_pool(x, size, strides, padding="valid")


_KERNELS = backend.module("kernels")

depthwise_conv = getattr(_KERNELS, "depthwise_conv", _keras_depthwise_conv)
"""``depthwise_conv(x, kernel, strides=1, dilation_rate=1)``:
``ops.depthwise_conv(x, kernel, strides, "same", dilation_rate)``, channels last, by the
running backend's kernel where it has one (``swd_keras/backend/jax/kernels.py``)."""

max_pool = getattr(_KERNELS, "max_pool", _keras_max_pool)
"""``max_pool(x, size, strides)``: ``ops.max_pool(x, size, strides, padding="same")``,
channels last, by the running backend's kernel where it has one."""

pointwise_conv = getattr(_KERNELS, "pointwise_conv", _keras_pointwise_conv)
"""``pointwise_conv(x, kernel)``: ``ops.conv(x, kernel, padding="valid")`` for a
(1, 1, c, c') kernel, channels last, by the running backend's kernel where it has one."""

average_pool = getattr(_KERNELS, "average_pool", _keras_average_pool)
"""``average_pool(x, size, strides)``: ``ops.average_pool(x, size, strides,
padding="valid")``, channels last, by the running backend's kernel where it has one."""
