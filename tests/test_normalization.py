"""normalize_from_output: a batch norm's gradient taken from its output."""

from __future__ import annotations

import numpy as np
import pytest
from keras import ops

from swd_keras.normalization import normalize_from_output
from tests.grads import input_gradient

EPSILON = 1e-5


@pytest.mark.backend
@pytest.mark.parametrize("passthrough", [0, 2])
def test_value_and_gradient_equal_the_differentiated_batch_norm(passthrough):
    rng = np.random.default_rng(7)
    x = (rng.normal(size=(4, 5, 3, 6)) * 3 + 1).astype("float32")
    weights = rng.normal(size=x.shape).astype("float32")
    width = x.shape[-1] - passthrough
    mask_np = np.repeat([1.0, 0.0], [width, passthrough]).astype("float32")

    def custom(x):
        mean, variance = ops.moments(ops.stop_gradient(x), axes=(0, 1, 2))
        mask = ops.convert_to_tensor(mask_np) if passthrough else None
        scale = ops.rsqrt(variance + EPSILON)
        if passthrough:
            scale = scale * mask + (1.0 - mask)
        shift = -mean * scale * (mask if passthrough else 1.0)
        return normalize_from_output(x, scale, shift, mask)

    def textbook(x):  # differentiated through the batch statistics
        mean, variance = ops.moments(x, axes=(0, 1, 2))
        normalised = (x - mean) / ops.sqrt(variance + EPSILON)
        return ops.where(ops.convert_to_tensor(mask_np) > 0, normalised, x)

    # Values against NumPy.
    want = x.copy()
    mean, variance = x[..., :width].mean(axis=(0, 1, 2)), x[..., :width].var(axis=(0, 1, 2))
    want[..., :width] = (x[..., :width] - mean) / np.sqrt(variance + EPSILON)
    np.testing.assert_allclose(ops.convert_to_numpy(custom(ops.convert_to_tensor(x))), want,
                               atol=1e-5)

    def loss(fn):
        return lambda x: ops.sum(ops.multiply(fn(x), weights))

    got, expected = input_gradient(loss(custom), x), input_gradient(loss(textbook), x)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)
    # The passed-through channels' gradient is the upstream gradient itself.
    np.testing.assert_array_equal(got[..., width:], weights[..., width:])
    assert np.abs(got[..., :width] - weights[..., :width]).max() > 1e-2  # not an identity
