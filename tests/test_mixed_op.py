"""The SWD mixed edge (SPEC §2) against the NumPy reference, gradients, serialization."""

import functools

import keras
import numpy as np
import pytest

from swd_keras.mixed_op import SWDMixedOp
from tests import reference as ref
from tests.grads import layer_gradients

to_np = keras.ops.convert_to_numpy


def reference_op(primitive, candidates, stride):
    """The NumPy function of one candidate op, with the edge's current weights of it
    (``candidates``: the edge's ``CandidateOps``)."""
    weights = {part: to_np(v.value) for part, v in candidates.op_weights(primitive).items()}
    if primitive.startswith("sep_conv"):
        first = functools.partial(ref.dil_conv, depthwise=weights["first_depthwise"],
                                  pointwise=weights["first_pointwise"], stride=stride,
                                  dilation=1)
        second = functools.partial(ref.dil_conv, depthwise=weights["second_depthwise"],
                                   pointwise=weights["second_pointwise"], stride=1,
                                   dilation=1)
        return lambda x: second(first(x))
    if primitive.startswith("dil_conv"):
        return functools.partial(ref.dil_conv, depthwise=weights["depthwise"],
                                 pointwise=weights["pointwise"], stride=stride, dilation=2)
    if primitive == "skip_connect":
        if stride == 1:
            return lambda x: x
        return functools.partial(ref.factorized_reduce, kernel_1=weights["conv_1"],
                                 kernel_2=weights["conv_2"])
    if primitive.endswith("pool_3x3"):
        return lambda x: ref.batch_norm_inference(ref.pool(x, primitive[:3], stride))
    assert primitive == "none"
    return lambda x: np.zeros_like(x[:, ::stride, ::stride, :])


def reference_ops(edge, stride):
    return [reference_op(p, edge.candidate_ops, stride) for p in edge.primitives]


def randomize(layer):
    # Non-zero biases, so that the reference must get them right.
    layer.set_weights([np.random.randn(*w.shape).astype("float32") * 0.5
                       if w.ndim else w for w in layer.get_weights()])


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size,channels,k", [(8, 16, 4), (7, 8, 2)])
@pytest.mark.parametrize("ua_pooling,la_pooling", [("avg+max", "avg"), ("max", "avg+max")])
def test_edge_matches_reference(stride, size, channels, k, ua_pooling, la_pooling):
    x = np.random.randn(3, size, size, channels).astype("float32")
    edge = SWDMixedOp(channels, stride, k=k, ua_pooling=ua_pooling, la_pooling=la_pooling)
    edge.build(x.shape)
    randomize(edge.upper)
    randomize(edge.lower)
    out, atten = edge(x, training=False, return_edge_weights=True)
    op_fns = reference_ops(edge, stride)
    expected, expected_atten = ref.swd_edge(
        x, edge.upper.get_weights(), edge.lower.get_weights(), op_fns, k, stride,
        ua_pooling, la_pooling)
    assert tuple(out.shape) == (3, -(-size // stride), -(-size // stride), channels)
    np.testing.assert_allclose(to_np(out), expected, atol=1e-5)
    np.testing.assert_allclose(to_np(atten), expected_atten, atol=1e-5)


@pytest.mark.backend
def test_unselected_channels_keep_the_scaled_input():
    x = np.random.randn(2, 6, 6, 8).astype("float32")
    edge = SWDMixedOp(8, 1, k=4)
    out = to_np(edge(x, training=False))
    i_mix = to_np(edge.upper(x))
    _, indices = ref.select_channels(x * i_mix, i_mix, 4)
    others = np.setdiff1d(np.arange(8), indices)
    np.testing.assert_allclose(out[..., others], (x * i_mix)[..., others], atol=1e-6)


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
def test_lower_attention_off_is_a_softmax_edge(stride):
    x = np.random.randn(2, 6, 6, 8).astype("float32")
    edge = SWDMixedOp(8, stride, k=2, lower_attention=False)
    edge.build(x.shape)
    edge.alphas.assign(np.random.randn(8).astype("float32"))
    out, atten = edge(x, training=False, return_edge_weights=True)
    weights = np.exp(to_np(edge.alphas.value))
    weights /= weights.sum()
    i_mix = to_np(edge.upper(x))
    scaled = x * i_mix
    selected, indices = ref.select_channels(scaled, i_mix, 2)
    mixed = sum(w * fn(selected) for w, fn in zip(weights, reference_ops(edge, stride)))
    expected = (scaled if stride == 1 else ref.max_pool_2x2(scaled)).copy()
    expected[..., indices] = mixed
    np.testing.assert_allclose(to_np(out), expected, atol=1e-5)
    np.testing.assert_allclose(to_np(atten), weights, atol=1e-6)


@pytest.mark.backend
def test_upper_attention_off_sends_all_channels():
    x = np.random.randn(2, 6, 6, 8).astype("float32")
    edge = SWDMixedOp(8, 1, k=3, upper_attention=False)  # k is unused without UA
    edge.build(x.shape)
    randomize(edge.lower)
    out, atten = edge(x, training=False, return_edge_weights=True)
    op_fns = reference_ops(edge, 1)
    f_in = np.concatenate([fn(x) for fn in op_fns], axis=-1)
    f_att = ref.channel_attention(f_in, edge.lower.get_weights(), "avg")
    f_out = f_in * f_att
    np.testing.assert_allclose(to_np(out), sum(np.split(f_out, 8, axis=-1)), atol=1e-5)
    np.testing.assert_allclose(
        to_np(atten), f_att.reshape(2, 8, 8).sum(axis=-1).mean(axis=0), atol=1e-5)


@pytest.mark.backend
def test_shared_alphas_come_from_the_caller():
    x = np.random.randn(2, 4, 4, 8).astype("float32")
    edge = SWDMixedOp(8, 1, k=1, upper_attention=False, lower_attention=False,
                      shared_alphas=True)
    weights = np.eye(8, dtype="float32")[4]  # all weight on skip_connect
    out, atten = edge(x, edge_weights=weights, training=False, return_edge_weights=True)
    np.testing.assert_allclose(to_np(out), x, atol=1e-6)
    np.testing.assert_allclose(to_np(atten), weights)
    assert edge.attention_variables == []
    with pytest.raises(ValueError, match="edge_weights"):
        edge(x)


@pytest.mark.backend
def test_gradients_reach_both_attention_mlps_but_not_atten():
    x = np.random.randn(2, 8, 8, 16).astype("float32")
    edge = SWDMixedOp(16, 1, k=4)
    edge.build(x.shape)
    grads = layer_gradients(edge, lambda out: keras.ops.sum(out * out), x, training=True)
    attention_paths = {v.path for v in edge.attention_variables}
    assert len(attention_paths) == 8
    for path in attention_paths:
        assert np.abs(grads[path]).sum() > 0, path
    atten_grads = layer_gradients(
        edge, lambda pair: keras.ops.sum(pair[1]), x, training=True, return_edge_weights=True)
    assert all(not g.any() for g in atten_grads.values())


def test_k_must_divide_channels():
    with pytest.raises(ValueError, match=r"k=3.*c=16"):
        SWDMixedOp(16, 1, k=3)
    with pytest.raises(ValueError, match="Unknown primitive"):
        SWDMixedOp(16, 1, primitives=["sep_conv_3x3", "conv_9x9"])
    with pytest.raises(ValueError, match="strides"):
        SWDMixedOp(16, 3)


def _edge_model(edge, size=8, channels=8):
    inputs = keras.Input((size, size, channels))
    out, atten = edge(inputs, return_edge_weights=True)
    return keras.Model(inputs, [out, atten])


@pytest.mark.backend
def test_keras_file_round_trip(tmp_path):
    edge = SWDMixedOp(8, 2, k=2, ua_pooling="avg", la_reduction=4)
    model = _edge_model(edge)
    x = np.random.randn(2, 8, 8, 8).astype("float32")
    expected = [to_np(t) for t in model(x, training=False)]
    path = tmp_path / "edge.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for got, want in zip(loaded(x, training=False), expected):
        np.testing.assert_allclose(to_np(got), want, atol=1e-6)
    loaded_edge = [layer for layer in loaded.layers if isinstance(layer, SWDMixedOp)][0]
    assert loaded_edge.get_config() == edge.get_config()


@pytest.mark.backend
def test_works_in_sequential():
    model = keras.Sequential([keras.Input((8, 8, 8)), SWDMixedOp(8, 1, k=2),
                              SWDMixedOp(8, 2, k=4), keras.layers.GlobalAveragePooling2D()])
    assert tuple(model(np.zeros((2, 8, 8, 8), "float32")).shape) == (2, 8)


@pytest.mark.backend
def test_compiled_predict_equals_eager(backend):
    if backend == "torch":
        pytest.skip("torch.compile is not one of the targets (XLA and jax.jit are)")
    model = _edge_model(SWDMixedOp(8, 2, k=2))
    x = np.random.randn(4, 8, 8, 8).astype("float32")
    eager = [to_np(t) for t in model(x, training=False)]
    model.compile(jit_compile=True)  # XLA on TensorFlow, jax.jit on JAX
    compiled = model.predict(x, verbose=0, batch_size=4)
    for got, want in zip(compiled, eager):
        np.testing.assert_allclose(got, want, atol=1e-5)
