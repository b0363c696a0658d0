"""``normalize_from_output`` on TensorFlow: a ``tf.custom_gradient`` whose backward pass
reads only the output (``swd_keras.normalization``)."""

from __future__ import annotations

import tensorflow as tf

from swd_keras.normalization import input_gradient


def normalize_from_output(x, scale, shift, mask):
    """See ``swd_keras.normalization.normalize_from_output``."""

    @tf.custom_gradient
    def forward(x):
        output = x * scale + shift
        return output, lambda grad: input_gradient(output, scale, mask, grad)

    return forward(x)
