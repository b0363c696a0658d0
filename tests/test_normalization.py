"""normalize_from_output (a batch norm's gradient taken from its output), and the batch
statistics and batch norm that the fused candidate ops take from the backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from swd_keras.normalization import batch_normalize, batch_statistics, normalize_from_output
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


def _textbook_batch_norm(x, gamma, beta):
    mean, variance = ops.moments(x, axes=(0, 1, 2))
    return (x - mean) / ops.sqrt(variance + EPSILON) * gamma + beta


@pytest.mark.backend
@pytest.mark.parametrize("shape", [(4, 5, 3, 6), (1, 1, 1, 3)])
def test_batch_statistics_and_batch_normalize_equal_numpy(shape):
    rng = np.random.default_rng(3)
    # A mean far from 0 next to a small spread: a one-pass variance would lose it.
    x = (rng.normal(size=shape) * 0.5 + 4).astype("float32")
    gamma = rng.uniform(0.5, 2, size=shape[-1]).astype("float32")
    beta = rng.normal(size=shape[-1]).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    mean, variance = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # the biased variance

    for got_mean, got_variance in (batch_statistics(ops.convert_to_tensor(x)),
                                   batch_normalize(ops.convert_to_tensor(x), None, None,
                                                   EPSILON)[1:]):
        np.testing.assert_allclose(ops.convert_to_numpy(got_mean), mean, rtol=1e-6)
        np.testing.assert_allclose(ops.convert_to_numpy(got_variance), variance,
                                   rtol=2e-5, atol=1e-7)
    y, _, _ = batch_normalize(ops.convert_to_tensor(x), ops.convert_to_tensor(gamma),
                              ops.convert_to_tensor(beta), EPSILON)
    np.testing.assert_allclose(ops.convert_to_numpy(y),
                               (x - mean) / np.sqrt(variance + EPSILON) * gamma + beta,
                               rtol=1e-4, atol=1e-4)

    # Its gradients are the batch norm's, through the statistics, for x, gamma and beta.
    def loss(x, gamma, beta, fn):
        return ops.sum(ops.multiply(fn(x, gamma, beta), weights))

    def fused(x, gamma, beta):
        return batch_normalize(x, gamma, beta, EPSILON)[0]

    for argument, value in enumerate((x, gamma, beta)):
        def of(fn, argument=argument):
            def scalar(v):
                args = [ops.convert_to_tensor(a) for a in (x, gamma, beta)]
                args[argument] = v
                return loss(*args, fn)
            return scalar

        got = input_gradient(of(fused), value)
        np.testing.assert_allclose(got, input_gradient(of(_textbook_batch_norm), value),
                                   rtol=1e-3, atol=2e-4)
        if argument == 0 and x.size > x.shape[-1]:
            assert np.abs(got - weights * gamma / np.sqrt(variance + EPSILON)).max() > 1e-2


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernel")
def test_tensorflow_takes_the_fused_kernel_with_any_batch_size():
    import tensorflow as tf

    x = (np.random.default_rng(4).normal(size=(6, 4, 4, 5)) * 2 + 1).astype("float32")
    unknown_batch = tf.TensorSpec((None, 4, 4, 5), tf.float32)
    normalize = tf.function(lambda x: batch_normalize(x, None, None, EPSILON),
                            input_signature=[unknown_batch])
    statistics = tf.function(batch_statistics, input_signature=[unknown_batch])
    for function in (normalize, statistics):
        graph = function.get_concrete_function().graph
        assert "FusedBatchNormV3" in {op.type for op in graph.get_operations()}
        got = function(tf.constant(x))
        np.testing.assert_allclose(got[-1].numpy(), x.var(axis=(0, 1, 2)), rtol=2e-5)
        np.testing.assert_allclose(got[-2].numpy(), x.mean(axis=(0, 1, 2)), rtol=1e-6,
                                   atol=1e-7)
