"""Batch normalization on TensorFlow: ``normalize_from_output`` as a
``tf.custom_gradient`` whose backward pass reads only the output
(``swd_keras.normalization``), and the batch statistics and training-mode batch norm by
TensorFlow's fused kernel, ``FusedBatchNormV3`` (one op where ``keras.ops.moments``
takes a mean, a squared difference and a second mean, and its fused gradient)."""

from __future__ import annotations

import tensorflow as tf

from swd_keras.normalization import input_gradient

# The epsilon of a statistics-only call: the kernel's output is not used.
_STATISTICS_EPSILON = 1e-3


def normalize_from_output(x, scale, shift, mask):
    """See ``swd_keras.normalization.normalize_from_output``."""

    @tf.custom_gradient
    def forward(x):
        output = x * scale + shift
        return output, lambda grad: input_gradient(output, scale, mask, grad)

    return forward(x)


def batch_statistics(x):
    """See ``swd_keras.normalization.batch_statistics``."""
    _, mean, variance = _fused_batch_norm(tf.stop_gradient(x), None, None,
                                          _STATISTICS_EPSILON)
    return mean, variance


def batch_normalize(x, gamma, beta, epsilon: float):
    """See ``swd_keras.normalization.batch_normalize``."""
    return _fused_batch_norm(x, gamma, beta, epsilon)


def _fused_batch_norm(x, gamma, beta, epsilon):
    """``FusedBatchNormV3`` in training mode on a (b, h, w, c) ``x``: (y, mean, biased
    variance). Its gradient is TensorFlow's (through y only: the statistics it returns
    are gradient-free)."""
    x = tf.convert_to_tensor(x)
    channels = x.shape[-1]
    gamma = tf.ones((channels,)) if gamma is None else tf.convert_to_tensor(gamma)
    beta = tf.zeros((channels,)) if beta is None else tf.convert_to_tensor(beta)
    empty = tf.zeros((0,))
    y, mean, unbiased, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=epsilon,
        data_format="NHWC", is_training=True)
    # The kernel returns the variance with Bessel's correction; the BatchNorm's (and
    # keras.ops.moments') is the biased one.
    count = x.shape[:-1].num_elements()  # None if the batch size is unknown
    if count is None:
        count = tf.cast(tf.size(x) // channels, unbiased.dtype)
        variance = tf.math.divide_no_nan(unbiased * (count - 1), count)
    else:  # one value per channel: variance 0 (the kernel's correction divides by 0)
        variance = unbiased * ((count - 1) / count) if count > 1 else tf.zeros_like(unbiased)
    return y, mean, variance
