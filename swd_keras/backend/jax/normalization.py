"""``normalize_from_output`` on JAX: a ``jax.custom_vjp`` whose residuals are the output
and the scale only (``swd_keras.normalization``)."""

from __future__ import annotations

import jax

from swd_keras.normalization import input_gradient


@jax.custom_vjp
def normalize_from_output(x, scale, shift, mask):
    """See ``swd_keras.normalization.normalize_from_output``."""
    return x * scale + shift


def _forward(x, scale, shift, mask):
    output = x * scale + shift
    return output, (output, scale, mask)


def _backward(residuals, grad):
    output, scale, mask = residuals
    zeros = jax.numpy.zeros_like(scale)
    return (input_gradient(output, scale, mask, grad), zeros, zeros,
            None if mask is None else zeros)


normalize_from_output.defvjp(_forward, _backward)
