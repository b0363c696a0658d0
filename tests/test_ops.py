"""The DARTS candidate operations against the NumPy reference."""

import keras
import numpy as np
import pytest

from swd_keras import ops as swd_ops
from tests import reference as ref

to_np = keras.ops.convert_to_numpy


def _weights(layer, name):
    return [to_np(v.value) for v in layer.weights if v.path.endswith(name)]


@pytest.mark.backend
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("kernel,stride,dilation", [(3, 1, 2), (5, 1, 2), (3, 2, 2), (5, 2, 2),
                                                    (3, 2, 1), (5, 1, 1)])
def test_dil_conv_matches_reference(size, kernel, stride, dilation):
    x = np.random.randn(2, size, size, 4).astype("float32")
    layer = swd_ops.DilConv(6, kernel, stride, dilation, affine=False)
    y = to_np(layer(x, training=False))
    (dw,), (pw,) = _weights(layer, "depthwise/kernel"), _weights(layer, "pointwise/kernel")
    np.testing.assert_allclose(y, ref.dil_conv(x, dw, pw, stride, dilation), atol=1e-5)


@pytest.mark.backend
@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 2)])
def test_sep_conv_is_two_dil_conv_blocks(kernel, stride):
    x = np.random.randn(2, 8, 8, 4).astype("float32")
    layer = swd_ops.SepConv(6, kernel, stride, affine=True)
    y = to_np(layer(x, training=False))
    (dw1,), (pw1,) = (_weights(layer, "first/depthwise/kernel"),
                      _weights(layer, "first/pointwise/kernel"))
    (dw2,), (pw2,) = (_weights(layer, "second/depthwise/kernel"),
                      _weights(layer, "second/pointwise/kernel"))
    assert pw1.shape == (1, 1, 4, 4) and pw2.shape == (1, 1, 4, 6)
    expected = ref.dil_conv(ref.dil_conv(x, dw1, pw1, stride, 1), dw2, pw2, 1, 1)
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
def test_relu_conv_bn_1x1_matches_reference(stride):
    # Stride 1 is the cells' preprocessing (kernels.pointwise_conv), stride 2 Conv2D's.
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(4, 6, 6, 5)) * 2 + 1).astype("float32")
    layer = swd_ops.ReLUConvBN(3, 1, stride, affine=True)
    layer.build(x.shape)
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype("float32"), rng.normal(size=3).astype("float32")
    layer.bn.gamma.assign(gamma)
    layer.bn.beta.assign(beta)
    (kernel,) = _weights(layer, "conv/kernel")
    conv = ref.pointwise_conv(ref.relu(x), kernel, stride)
    np.testing.assert_allclose(to_np(layer(x, training=False)),
                               ref.batch_norm_inference(conv, gamma, beta), atol=1e-5)
    y = to_np(layer(x, training=True))
    expected = ref.batch_norm_inference(conv, gamma, beta, conv.mean(axis=(0, 1, 2)),
                                        conv.var(axis=(0, 1, 2)))
    np.testing.assert_allclose(y, expected, atol=1e-4)
    assert y.shape == (4, -(-6 // stride), -(-6 // stride), 3)


@pytest.mark.backend
@pytest.mark.parametrize("size", [8, 5])
def test_factorized_reduce_matches_reference(size):
    x = np.random.randn(2, size, size, 4).astype("float32")
    layer = swd_ops.FactorizedReduce(6, affine=False)
    y = to_np(layer(x, training=False))
    k1, k2 = _weights(layer, "conv_1/kernel")[0], _weights(layer, "conv_2/kernel")[0]
    np.testing.assert_allclose(y, ref.factorized_reduce(x, k1, k2), atol=1e-5)
    assert y.shape == (2, -(-size // 2), -(-size // 2), 6)


@pytest.mark.backend
@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("window", [3, 5])
def test_pools_match_reference(kind, stride, batch_norm, size, window):
    x = np.random.randn(2, size, size, 3).astype("float32")
    pool = swd_ops.Pool(kind, stride, batch_norm=batch_norm, pool_size=window)
    y = to_np(pool(x, training=False))
    expected = ref.pool(x, kind, stride, size=window)
    if batch_norm:
        expected = ref.batch_norm_inference(expected)
    np.testing.assert_allclose(y, expected, atol=1e-5)


@pytest.mark.backend
def test_avg_pool_does_not_count_padding():
    x = np.ones((1, 4, 4, 1), "float32")
    # With padding counted, corner averages would be 4/9.
    np.testing.assert_allclose(to_np(swd_ops.Pool("avg")(x)), np.ones((1, 4, 4, 1)), atol=1e-6)


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
def test_zero_and_identity(stride):
    x = np.random.randn(2, 6, 6, 3).astype("float32")
    zero = to_np(swd_ops.make_op("none", 3, stride)(x))
    assert zero.shape == (2, 6 // stride, 6 // stride, 3) and not zero.any()
    np.testing.assert_array_equal(to_np(swd_ops.Identity()(x)), x)


@pytest.mark.parametrize("primitive", swd_ops.PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
def test_every_primitive_keeps_channels_and_strides(primitive, stride):
    op = swd_ops.make_op(primitive, 8, stride, affine=False, pool_batch_norm=True)
    assert tuple(op(np.zeros((2, 8, 8, 8), "float32")).shape) == (2, 8 // stride, 8 // stride, 8)
    # Search edges: no affine BN parameters, and pools carry a (non-affine) BN.
    if primitive.endswith("pool_3x3"):
        assert len(op.weights) == 2 and not op.trainable_weights


def _darts_param_count(primitive, c, stride, affine):
    """Parameter counts written from DARTS' operations.py, independently of ours."""
    bn = 2 * c if affine else 0
    k = {"sep_conv_3x3": 3, "sep_conv_5x5": 5, "dil_conv_3x3": 3, "dil_conv_5x5": 5}.get(primitive)
    if primitive.startswith("sep_conv"):
        return 2 * (k * k * c + c * c + bn)
    if primitive.startswith("dil_conv"):
        return k * k * c + c * c + bn
    if primitive == "skip_connect" and stride == 2:
        return c * (c // 2) * 2 + bn
    return 0


@pytest.mark.parametrize("primitive", swd_ops.PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_parameter_counts_match_darts(primitive, stride, affine):
    op = swd_ops.make_op(primitive, 16, stride, affine=affine)
    op(np.zeros((1, 8, 8, 16), "float32"))
    count = sum(int(np.prod(w.shape)) for w in op.trainable_weights)
    assert count == _darts_param_count(primitive, 16, stride, affine)


def test_primitives_order_is_the_spec_order():
    assert swd_ops.PRIMITIVES == (
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5", "skip_connect",
        "avg_pool_3x3", "max_pool_3x3", "none")
    # The built-ins are registered first, in that order; users' primitives follow.
    assert tuple(swd_ops.OPS)[:len(swd_ops.PRIMITIVES)] == swd_ops.PRIMITIVES
    assert {p for p in swd_ops.PRIMITIVES if p in swd_ops.PARAMETER_FREE} == {
        "skip_connect", "avg_pool_3x3", "max_pool_3x3", "none"}


def test_unknown_primitive_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown primitive.*conv_7x7.*allowed"):
        swd_ops.make_op("conv_7x7", 8)
    with pytest.raises(ValueError, match="pool_type"):
        swd_ops.Pool("min")


@pytest.mark.parametrize("layer", [
    swd_ops.ReLUConvBN(8, 3, 2, affine=False), swd_ops.DilConv(8, 5, 2, 2),
    swd_ops.SepConv(8, 3, 1), swd_ops.FactorizedReduce(8), swd_ops.Zero(2),
    swd_ops.Pool("avg", 2, batch_norm=True), swd_ops.Identity(),
])
def test_config_round_trip(layer):
    x = np.random.randn(2, 8, 8, 8).astype("float32")
    y = to_np(layer(x, training=False))
    clone = layer.__class__.from_config(layer.get_config())
    clone(x, training=False)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_np(clone(x, training=False)), y, atol=1e-6)
    assert clone.get_config() == layer.get_config()
