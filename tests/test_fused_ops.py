"""CandidateOps (all candidate ops of an edge, fused) against a NumPy model of the
per-op definitions (SPEC §1), and against the per-op layers of ops.py: outputs,
BatchNorm statistics and gradients, in training and inference mode. Then several edges
computed together (compute_candidates) against each alone; several whole edges at
once (EdgeGroup) are tested in test_edge_group.py."""

import keras
import numpy as np
import pytest

from swd_keras.fused_ops import CandidateOps, compute_candidates
from swd_keras.kernels import average_pool, depthwise_conv, max_pool, pointwise_conv
from swd_keras.ops import (
    PRIMITIVES,
    DilConv,
    FusedKernel,
    Pool,
    SepConv,
    make_op,
    register_primitive,
)
from tests import reference as ref
from tests.grads import input_gradient, layer_gradients

to_np = keras.ops.convert_to_numpy

# Users' primitives with fused forms of other sizes: CandidateOps computes them with
# the built-ins, and must equal their per-op layers as it does for the built-ins.
USER_FUSED = {
    "sep_conv_7x7": (lambda c, s, affine, **kw: SepConv(c, 7, s, affine, **kw),
                     FusedKernel("sep_conv", 7)),
    "dil_conv_7x7": (lambda c, s, affine, **kw: DilConv(c, 7, s, 2, affine, **kw),
                     FusedKernel("dil_conv", 7)),
    "avg_pool_5x5": (lambda c, s, affine, batch_norm=False, **kw: Pool(
        "avg", s, batch_norm, pool_size=5, **kw), FusedKernel("avg_pool", 5)),
    "max_pool_5x5": (lambda c, s, affine, batch_norm=False, **kw: Pool(
        "max", s, batch_norm, pool_size=5, **kw), FusedKernel("max_pool", 5)),
}
for _name, (_factory, _fused) in USER_FUSED.items():
    register_primitive(_name, _factory, fused=_fused)

SUBSETS = [
    PRIMITIVES,
    ("max_pool_3x3", "dil_conv_5x5", "skip_connect"),
    ("none", "sep_conv_5x5", "avg_pool_3x3", "dil_conv_3x3", "sep_conv_3x3"),
    ("skip_connect", "none"),
]


def randomize(layer, rng):
    """Random kernels, affine parameters and moving statistics (variances positive)."""
    for v in layer.weights:
        values = rng.normal(size=v.shape) * 0.5
        if "variance" in v.path:
            values = rng.uniform(0.5, 2.0, size=v.shape)
        v.assign(values.astype("float32"))


def statistics(layer):
    return {v.name: to_np(v.value).copy() for v in layer.non_trainable_weights}


def reference_features(layer, x, training, stats):
    """NumPy model: the outputs of the layer's ops but ``none`` in op order, and the
    moving statistics after the call (``stats``: before it)."""
    c, s = layer.channels, layer.strides
    weights = {p: {part: to_np(v.value) for part, v in layer.op_weights(p).items()}
               for p in layer.primitives}
    sep = [p for p in layer.primitives if p.startswith("sep_conv")]
    normalised = [p for p in layer.primitives
                  if p != "none" and not (p == "skip_connect" and s == 1)]
    new_stats = {name: value.copy() for name, value in stats.items()}

    def bn(y, group, op, index, prefix=""):
        channels = slice(index * c, (index + 1) * c)
        mean_name, var_name = f"{group}_moving_mean", f"{group}_moving_variance"
        if training:
            mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))
            new_stats[mean_name][channels] = 0.9 * stats[mean_name][channels] + 0.1 * mean
            new_stats[var_name][channels] = 0.9 * stats[var_name][channels] + 0.1 * var
        else:
            mean, var = stats[mean_name][channels], stats[var_name][channels]
        gamma = weights[op].get(f"{prefix}gamma")
        beta = weights[op].get(f"{prefix}beta")
        return ref.batch_norm_inference(y, gamma, beta, mean, var)

    outputs = []
    for p in layer.primitives:
        w = weights[p]
        if p.startswith("sep_conv"):
            y = ref.pointwise_conv(ref.depthwise_conv(ref.relu(x), w["first_depthwise"], s),
                                   w["first_pointwise"])
            y = bn(y, "sep_bn", p, sep.index(p), "first_")
            y = ref.pointwise_conv(ref.depthwise_conv(ref.relu(y), w["second_depthwise"]),
                                   w["second_pointwise"])
            outputs.append(bn(y, "bn", p, normalised.index(p), "second_"))
        elif p.startswith("dil_conv"):
            y = ref.depthwise_conv(ref.relu(x), w["depthwise"], s, dilation=2)
            outputs.append(bn(ref.pointwise_conv(y, w["pointwise"]), "bn", p,
                              normalised.index(p)))
        elif p == "skip_connect" and s == 2:
            r = ref.relu(x)
            shifted = np.pad(r[:, 1:, 1:, :], ((0, 0), (0, 1), (0, 1), (0, 0)))
            y = np.concatenate([ref.pointwise_conv(r, w["conv_1"], 2),
                                ref.pointwise_conv(shifted, w["conv_2"], 2)], axis=-1)
            outputs.append(bn(y, "bn", p, normalised.index(p)))
        elif p == "skip_connect":
            outputs.append(x)
        elif p.endswith("pool_3x3"):
            outputs.append(bn(ref.pool(x, p[:3], s), "bn", p, normalised.index(p)))
    features = (np.concatenate(outputs, axis=-1) if outputs
                else np.zeros(x[:, ::s, ::s, :0].shape))
    return features, new_stats


@pytest.mark.backend
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("kernel_size,multiplier", [(3, 1), (5, 2)])
def test_depthwise_conv_matches_reference(stride, dilation, size, kernel_size, multiplier):
    # On JAX it is a sum of shifted products; on the others keras' depthwise_conv.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 3, multiplier)).astype("float32")
    got = to_np(depthwise_conv(keras.ops.convert_to_tensor(x),
                               keras.ops.convert_to_tensor(kernel), stride, dilation))
    want = np.stack([ref.depthwise_conv(x, kernel[..., j:j + 1], stride, dilation)
                     for j in range(multiplier)], axis=-1).reshape(got.shape)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.backend
@pytest.mark.parametrize("stride,dilation,size", [(1, 1, 8), (2, 1, 8), (2, 1, 7), (1, 2, 7)])
def test_depthwise_conv_gradients_match_the_native_convolution(backend, stride, dilation,
                                                                size):
    # JAX's shifted products have their own gradient, PyTorch's kernel runs on a
    # channels_last view; Keras' own depthwise convolution (on JAX XLA's grouped
    # convolution, slow but right at this size) is the independent reference.
    if backend == "tensorflow":
        pytest.skip("TensorFlow computes depthwise convolutions with keras.ops itself")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    kernel = rng.normal(size=(5, 5, 3, 2)).astype("float32")
    weights = rng.normal(size=(2, -(-size // stride), -(-size // stride), 6)).astype("float32")

    def gradients(conv):  # with respect to the input, then to the kernel
        return (input_gradient(lambda x: keras.ops.sum(keras.ops.multiply(conv(x, kernel),
                                                                          weights)), x),
                input_gradient(lambda k: keras.ops.sum(keras.ops.multiply(conv(x, k),
                                                                          weights)), kernel))

    got = gradients(lambda x, k: depthwise_conv(x, k, stride, dilation))
    want = gradients(lambda x, k: keras.ops.depthwise_conv(
        x, k, strides=stride, padding="same", dilation_rate=dilation))
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


@pytest.mark.backend
@pytest.mark.parametrize("size,stride", [(8, 1), (7, 1), (8, 2), (7, 2)])
def test_pointwise_conv_and_average_pool_match_numpy(size, stride):
    # The backend's own forms where it has them (PyTorch's: a matrix product and a pool
    # on a channels_last view).
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, size, size, 6)).astype("float32")
    kernel = rng.normal(size=(1, 1, 6, 4)).astype("float32")
    np.testing.assert_allclose(to_np(pointwise_conv(x, kernel)), ref.pointwise_conv(x, kernel),
                               rtol=1e-5, atol=1e-5)
    out = -(-(size - 3 + 1) // stride)  # "valid" 3x3 windows
    want = np.stack([np.stack([x[:, i * stride:i * stride + 3, j * stride:j * stride + 3]
                               .mean(axis=(1, 2)) for j in range(out)], axis=1)
                     for i in range(out)], axis=1)
    np.testing.assert_allclose(to_np(average_pool(x, 3, stride)), want, rtol=1e-5, atol=1e-6)


@pytest.mark.backend
@pytest.mark.parametrize("pool_size,stride,size", [(3, 1, 8), (3, 2, 8), (3, 2, 7), (2, 2, 8),
                                                   (2, 2, 7)])
def test_max_pool_and_its_gradient_match_numpy(backend, pool_size, stride, size):
    # JAX's max pool is computed and differentiated by hand (running maximum); the
    # other backends' native pools must give the same.
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, size, size, 3)).astype("float32")
    out_size = -(-size // stride)
    weights = rng.normal(size=(2, out_size, out_size, 3)).astype("float32")
    want = ref.pool(x, "max", stride, pool_size)
    np.testing.assert_allclose(to_np(max_pool(x, pool_size, stride)), want, rtol=1e-6)

    # The gradient: each output's weight goes to the input pixel holding its maximum.
    ph, pw = ref.same_padding(size, pool_size, stride), ref.same_padding(size, pool_size, stride)
    padded = np.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-np.inf)
    want_grad = np.zeros_like(padded)
    for b, y, z, c in np.ndindex(*weights.shape):
        window = padded[b, y * stride:y * stride + pool_size, z * stride:z * stride + pool_size, c]
        i, j = np.unravel_index(np.argmax(window), window.shape)
        want_grad[b, y * stride + i, z * stride + j, c] += weights[b, y, z, c]
    want_grad = want_grad[:, ph[0]:ph[0] + size, pw[0]:pw[0] + size]
    grad = input_gradient(
        lambda x: keras.ops.sum(keras.ops.multiply(max_pool(x, pool_size, stride), weights)), x)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.backend
@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize("affine", [False, True])
def test_all_ops_match_reference(training, stride, size, affine):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, size, size, 4)).astype("float32")
    layer = CandidateOps(4, stride, PRIMITIVES, affine=affine)
    layer.build(x.shape)
    randomize(layer, rng)
    before = statistics(layer)
    expected, expected_stats = reference_features(layer, x, training, before)
    out = to_np(layer(x, training=training))
    assert out.shape == (3, -(-size // stride), -(-size // stride), 7 * 4)
    np.testing.assert_allclose(out, expected, atol=1e-4, rtol=1e-4)
    for name, value in statistics(layer).items():
        np.testing.assert_allclose(value, expected_stats[name], atol=1e-5, err_msg=name)


@pytest.mark.backend
@pytest.mark.parametrize("primitives", SUBSETS[1:] + [("none",)])
@pytest.mark.parametrize("stride", [1, 2])
def test_any_subset_and_order_of_primitives(primitives, stride):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 6, 4)).astype("float32")
    layer = CandidateOps(4, stride, primitives)
    layer.build(x.shape)
    randomize(layer, rng)
    before = statistics(layer)
    expected, expected_stats = reference_features(layer, x, True, before)
    assert layer.computed_primitives == tuple(p for p in primitives if p != "none")
    np.testing.assert_allclose(to_np(layer(x, training=True)), expected, atol=1e-4,
                               rtol=1e-4)
    for name, value in statistics(layer).items():
        np.testing.assert_allclose(value, expected_stats[name], atol=1e-5, err_msg=name)


class PerOpLayers(keras.layers.Layer):
    """The same ops as separate ops.py layers, outputs concatenated (but ``none``)."""

    def __init__(self, primitives, channels, strides, affine, **kwargs):
        super().__init__(**kwargs)
        self.primitives = [p for p in primitives if p != "none"]
        self.per_op = [make_op(p, channels, strides, affine, pool_batch_norm=True,
                               name=f"op_{p}") for p in self.primitives]

    def build(self, input_shape):
        for op in self.per_op:
            op.build(input_shape)

    def call(self, x, training=None):
        return keras.ops.concatenate([op(x, training=training) for op in self.per_op], -1)


def per_op_suffix(primitive, part):
    """The ops.py variable path (suffix) holding CandidateOps' ``part`` of ``primitive``."""
    stage = ""
    if part.startswith(("first_", "second_")):
        stage, part = part.split("_", 1)
    leaf = {"depthwise": "depthwise/kernel", "pointwise": "pointwise/kernel",
            "conv_1": "conv_1/kernel", "conv_2": "conv_2/kernel", "gamma": "bn/gamma",
            "beta": "bn/beta"}[part]
    return f"op_{primitive}/" + (f"{stage}/{leaf}" if stage else leaf)


def paired_layers(primitives, stride, affine, x, rng):
    fused = CandidateOps(x.shape[-1], stride, primitives, affine=affine)
    fused.build(x.shape)
    randomize(fused, rng)
    for v in fused.non_trainable_weights:  # per-op layers start from fresh statistics
        v.assign(np.zeros(v.shape) if "mean" in v.path else np.ones(v.shape))
    per_op = PerOpLayers(primitives, x.shape[-1], stride, affine)
    per_op.build(x.shape)
    by_path = {v.path: v for v in per_op.trainable_weights}
    pairs = {}
    for p in fused.computed_primitives:
        for part, variable in fused.op_weights(p).items():
            (target,) = [path for path in by_path if path.endswith(per_op_suffix(p, part))]
            by_path[target].assign(variable.value)
            pairs[variable.path] = target
    assert sorted(pairs.values()) == sorted(by_path)  # every per-op weight is mapped
    return fused, per_op, pairs


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("primitives", SUBSETS[:3] + [
    ("sep_conv_7x7", "max_pool_5x5", "sep_conv_3x3", "avg_pool_5x5", "dil_conv_7x7",
     "dil_conv_3x3", "skip_connect")])
def test_outputs_statistics_and_gradients_equal_the_per_op_layers(stride, affine,
                                                                   primitives):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 8, 8, 4)).astype("float32")
    fused, per_op, pairs = paired_layers(primitives, stride, affine, x, rng)
    np.testing.assert_allclose(to_np(fused(x, training=True)),
                               to_np(per_op(x, training=True)), atol=1e-4, rtol=1e-4)
    # Moving statistics: the fused vectors are the per-op ones concatenated in op order.
    per_op_stats = {v.path: to_np(v.value) for v in per_op.non_trainable_weights}
    sep = [p for p in fused.computed_primitives if p.startswith("sep_conv")]
    normalised = [p for p in fused.computed_primitives
                  if not (p == "skip_connect" and stride == 1)]
    for statistic in ("moving_mean", "moving_variance"):
        expected = {
            "sep_bn": [f"op_{p}/first/bn/{statistic}" for p in sep],
            "bn": [f"op_{p}/{'second/' if p in sep else ''}bn/{statistic}"
                   for p in normalised]}
        for group, paths in expected.items():
            if not paths:
                continue
            got = to_np(getattr(fused, f"{group}_{statistic}").value)
            want = np.concatenate([per_op_stats[f"{per_op.name}/{path}"] for path in paths])
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{group} {statistic}")
    np.testing.assert_allclose(to_np(fused(x, training=False)),
                               to_np(per_op(x, training=False)), atol=1e-4, rtol=1e-4)

    weights = keras.ops.convert_to_tensor(
        rng.normal(size=fused.compute_output_shape(x.shape)).astype("float32"))

    def loss(out):
        return keras.ops.sum(out * weights)

    fused_grads = layer_gradients(fused, loss, x, training=True)
    per_op_grads = layer_gradients(per_op, loss, x, training=True)
    for fused_path, per_op_path in pairs.items():
        assert np.abs(per_op_grads[per_op_path]).sum() > 0, per_op_path
        np.testing.assert_allclose(fused_grads[fused_path], per_op_grads[per_op_path],
                                   atol=1e-4, rtol=1e-4, err_msg=fused_path)


@pytest.mark.parametrize("primitive", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_parameters_have_the_per_op_shapes(primitive, stride, affine):
    fused = CandidateOps(8, stride, PRIMITIVES, affine=affine)
    fused.build((2, 8, 8, 8))
    op = make_op(primitive, 8, stride, affine, pool_batch_norm=True)
    op.build((2, 8, 8, 8))
    assert (sorted(tuple(v.shape) for v in fused.op_weights(primitive).values())
            == sorted(tuple(v.shape) for v in op.trainable_weights))


def test_trainable_count_is_the_sum_of_the_ops():
    fused = CandidateOps(16, 2, PRIMITIVES)
    fused.build((1, 8, 8, 16))
    total = 0
    for p in PRIMITIVES:
        op = make_op(p, 16, 2, affine=False)
        op.build((1, 8, 8, 16))
        total += sum(int(np.prod(v.shape)) for v in op.trainable_weights)
    assert sum(int(np.prod(v.shape)) for v in fused.trainable_weights) == total


def test_config_round_trip_and_errors():
    layer = CandidateOps(4, 2, SUBSETS[2], affine=True)
    x = np.random.randn(2, 8, 8, 4).astype("float32")
    y = to_np(layer(x, training=False))
    clone = CandidateOps.from_config(layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_np(clone(x, training=False)), y, atol=1e-6)
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError, match="strides"):
        CandidateOps(4, 3)
    with pytest.raises(ValueError, match="Unknown primitive"):
        CandidateOps(4, 1, ["conv_7x7"])
    with pytest.raises(ValueError, match="channels >= 2"):
        CandidateOps(1, 2, ["skip_connect"])
    with pytest.raises(ValueError, match="not one of"):
        layer.op_weights("dil_conv_5x5")


@pytest.mark.backend
def test_mixed_precision_keeps_statistics_in_float32():
    x = np.random.randn(2, 8, 8, 4).astype("float32")
    reference = CandidateOps(4, 2, PRIMITIVES)
    expected = to_np(reference(x, training=True))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = CandidateOps(4, 2, PRIMITIVES)
        layer.build(x.shape)
        layer.set_weights(reference.get_weights())
        out = layer(x, training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    assert all(keras.backend.standardize_dtype(v.dtype) == "float32"
               for v in layer.non_trainable_weights)
    np.testing.assert_allclose(to_np(out).astype("float32"), expected, atol=0.05, rtol=0.05)


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("primitives", SUBSETS[:3])
@pytest.mark.parametrize("channels", [4, 16])  # 3 layers x 2 ops x 16: a batched matmul
def test_layers_computed_together_equal_each_alone(stride, primitives, channels):
    rng = np.random.default_rng(3)
    xs = [rng.normal(size=(2, 8, 8, channels)).astype("float32") for _ in range(3)]
    together = [CandidateOps(channels, stride, primitives, affine=True) for _ in xs]
    alone = [CandidateOps(channels, stride, primitives, affine=True) for _ in xs]
    for a, b in zip(together, alone):
        a.build(xs[0].shape)
        b.build(xs[0].shape)
        randomize(a, rng)
        b.set_weights(a.get_weights())
    for training in (True, False):
        out = to_np(compute_candidates(together, np.concatenate(xs, axis=-1),
                                       training=training))
        each = [to_np(layer(x, training=training)) for layer, x in zip(alone, xs)]
        computed, order = together[0].computed_primitives, together[0].feature_primitives
        assert sorted(order) == sorted(computed)
        blocks = [computed.index(p) for p in order]
        # Op-major in feature order: op o of layer e on channels (o * E + e) * c.
        expected = np.stack([e.reshape(e.shape[:3] + (len(order), channels))[..., blocks, :]
                             for e in each], axis=4)
        np.testing.assert_allclose(out, expected.reshape(out.shape), atol=1e-4, rtol=1e-4)
        for a, b in zip(together, alone):
            for got, want in zip(a.get_weights(), b.get_weights()):
                np.testing.assert_allclose(got, want, atol=1e-6)


def test_compute_candidates_needs_one_configuration():
    mismatched = [CandidateOps(4), CandidateOps(4, strides=2)]
    with pytest.raises(ValueError, match="one configuration"):
        compute_candidates(mismatched, np.zeros((1, 4, 4, 8), "float32"))


def test_fewer_graph_operations_than_the_per_op_layers():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("counts TensorFlow graph operations")
    import tensorflow as tf

    def count(fn, x):
        return len(tf.function(fn).get_concrete_function(x).graph.get_operations())

    x = tf.zeros((2, 8, 8, 4))
    fused = CandidateOps(4, 1, PRIMITIVES)
    per_op = PerOpLayers(PRIMITIVES, 4, 1, affine=False)
    group = [CandidateOps(4, 1, PRIMITIVES) for _ in range(4)]
    for layer in (fused, per_op, *group):
        layer.build(x.shape)
    one = count(lambda x: fused(x, training=True), x)
    # A depthwise convolution per op (at its own kernel size) costs a few operations
    # more than one shared, zero-padded convolution, for a third fewer multiplications.
    assert one < 0.65 * count(lambda x: per_op(x, training=True), x)
    # Four edges together cost less than two alone.
    assert count(lambda x: compute_candidates(group, x, training=True),
                 tf.zeros((2, 8, 8, 16))) < 2 * one
