"""Upper/lower attention and channel selection against the NumPy reference."""

import keras
import numpy as np
import pytest

from swd_keras.attention import (
    LowerAttention,
    UpperAttention,
    select_channels,
    top_channels,
    write_back,
)
from tests import reference as ref
from tests.grads import layer_gradients

to_np = keras.ops.convert_to_numpy


@pytest.mark.backend
@pytest.mark.parametrize("pooling", ["avg+max", "avg", "max"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_upper_attention_matches_eq_6(pooling, use_bias):
    x = np.random.randn(3, 5, 5, 16).astype("float32")
    layer = UpperAttention(reduction=2, pooling=pooling, use_bias=use_bias)
    layer.build(x.shape)
    # Non-zero biases so that a wrong bias handling cannot pass.
    layer.set_weights([np.random.randn(*w.shape).astype("float32") for w in layer.get_weights()])
    out = to_np(layer(x))
    assert out.shape == (3, 1, 1, 16)
    np.testing.assert_allclose(out, ref.channel_attention(x, layer.get_weights(), pooling),
                               atol=1e-5)


def test_upper_attention_weight_layout():
    layer = UpperAttention()
    layer.build((None, 8, 8, 16))
    assert [w.shape for w in layer.get_weights()] == [(16, 8), (8,), (8, 16), (16,)]
    no_bias = UpperAttention(use_bias=False)
    no_bias.build((None, 8, 8, 16))
    assert [w.shape for w in no_bias.get_weights()] == [(16, 8), (8, 16)]


@pytest.mark.backend
@pytest.mark.parametrize("pooling", ["avg", "avg+max"])
def test_lower_attention_matches_se_block(pooling):
    x = np.random.randn(2, 4, 4, 32).astype("float32")
    layer = LowerAttention(pooling=pooling)
    layer.build(x.shape)
    layer.set_weights([np.random.randn(*w.shape).astype("float32") for w in layer.get_weights()])
    assert [w.shape for w in layer.get_weights()] == [(32, 4), (4,), (4, 32), (32,)]
    np.testing.assert_allclose(to_np(layer(x)),
                               ref.channel_attention(x, layer.get_weights(), pooling), atol=1e-5)


@pytest.mark.backend
@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_select_channels_matches_algorithm_2(k):
    x = np.random.randn(3, 4, 4, 16).astype("float32")
    attention = np.random.rand(3, 1, 1, 16).astype("float32")
    selected, indices = select_channels(x, attention, k)
    expected, expected_indices = ref.select_channels(x, attention, k)
    np.testing.assert_array_equal(to_np(indices), expected_indices)
    np.testing.assert_allclose(to_np(selected), expected, atol=0)
    assert to_np(indices).dtype == np.int32


@pytest.mark.backend
def test_select_channels_uses_the_batch_sum():
    # Channel 0 wins for one sample only; channel 1 wins on the batch sum.
    attention = np.array([[0.9, 0.5, 0.0, 0.0], [0.0, 0.5, 0.1, 0.0]], "float32")
    _, indices = select_channels(np.zeros((2, 1, 1, 4), "float32"), attention, k=4)
    assert to_np(indices).tolist() == [1]


@pytest.mark.parametrize("c,k", [(16, 3), (6, 4), (8, 0)])
def test_k_must_divide_c(c, k):
    with pytest.raises(ValueError, match=rf"k={k}.*c={c}"):
        select_channels(np.zeros((1, 2, 2, c), "float32"), np.ones((1, 1, 1, c), "float32"), k)


def test_bad_pooling_and_reduction():
    with pytest.raises(ValueError, match="pooling must be one of"):
        UpperAttention(pooling="sum")
    with pytest.raises(ValueError, match="reduction"):
        LowerAttention(reduction=0)


@pytest.mark.backend
def test_attention_mlp_receives_gradients():
    x = np.random.randn(2, 4, 4, 8).astype("float32")
    layer = UpperAttention()
    layer.build(x.shape)
    grads = layer_gradients(layer, lambda a: keras.ops.sum(a * a), x)
    assert len(grads) == 4 and all(np.abs(g).sum() > 0 for g in grads.values())


@pytest.mark.parametrize("layer", [UpperAttention(4, "max", False), LowerAttention(2, "avg+max")])
def test_config_round_trip(layer):
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert (clone.reduction, clone.pooling, clone.use_bias) == (
        layer.reduction, layer.pooling, layer.use_bias)


@pytest.mark.backend
def test_attention_layers_in_a_saved_functional_model(tmp_path):
    inputs = keras.Input((6, 6, 8))
    scaled = inputs * UpperAttention(reduction=4)(inputs)
    outputs = scaled * LowerAttention(reduction=2, pooling="avg+max")(scaled)
    model = keras.Model(inputs, outputs)
    x = np.random.randn(2, 6, 6, 8).astype("float32")
    expected = to_np(model(x))
    model.save(tmp_path / "attention.keras")
    loaded = keras.models.load_model(tmp_path / "attention.keras")
    np.testing.assert_allclose(to_np(loaded(x)), expected, atol=1e-6)
    sequential = keras.Sequential([keras.Input((6, 6, 8)), UpperAttention()])
    assert tuple(sequential(x).shape) == (2, 1, 1, 8)


@pytest.mark.backend
@pytest.mark.parametrize("pooling", ["avg+max", "max"])
def test_attention_of_several_layers_equals_each_layer(pooling):
    x = np.random.randn(3, 2, 5, 5, 8).astype("float32")  # (E, b, h, w, c)
    attention_layers = [UpperAttention(pooling=pooling) for _ in range(3)]
    for layer in attention_layers:
        layer.build(x.shape[1:])
        layer.set_weights([np.random.randn(*w.shape).astype("float32")
                           for w in layer.get_weights()])
    pooled = keras.ops.stack([layer.pool(xe) for layer, xe in zip(attention_layers, x)])
    batched = to_np(UpperAttention.attention(attention_layers, pooled))
    assert batched.shape == (3, 2, 8)
    for e, layer in enumerate(attention_layers):
        expected = ref.channel_attention(x[e], layer.get_weights(), pooling)[:, 0, 0, :]
        np.testing.assert_allclose(batched[e], expected, atol=1e-5)
    one = to_np(UpperAttention.attention(attention_layers[:1], pooled[:1]))
    np.testing.assert_allclose(one[0], batched[0], atol=1e-6)


@pytest.mark.backend
def test_top_channels_of_several_edges():
    attention = np.random.rand(3, 4, 16).astype("float32")  # (E, b, c)
    indices = to_np(top_channels(attention, 4))
    assert indices.shape == (3, 4) and indices.dtype == np.int32
    for e in range(3):
        np.testing.assert_array_equal(indices[e], ref.select_channels(
            attention[e][:, None, None, :], attention[e], 4)[1])


@pytest.mark.backend
def test_write_back_replaces_the_selected_channels():
    base = np.random.randn(2, 3, 3, 8).astype("float32")
    mixed = np.random.randn(2, 3, 3, 2).astype("float32")
    expected = base.copy()
    expected[..., [1, 6]] = mixed
    indices = keras.ops.convert_to_tensor(np.array([1, 6], "int32"))
    out = write_back(keras.ops.convert_to_tensor(base), mixed, indices)
    np.testing.assert_allclose(to_np(out), expected, atol=1e-6)
    # Three edges on two bases at once, the kept channels scaled per sample.
    bases = [base, -base, base]
    tensors = [keras.ops.convert_to_tensor(b) for b in bases]
    rows = np.array([[1, 6], [0, 7], [2, 3]], "int32")
    scale = np.random.rand(3, 2, 8).astype("float32")
    values = np.random.randn(2, 3, 3, 6).astype("float32")
    outputs = write_back(tensors, values, keras.ops.convert_to_tensor(rows),
                         scale=keras.ops.convert_to_tensor(scale))
    assert len(outputs) == 3
    for e, out in enumerate(outputs):
        want = bases[e] * scale[e][:, None, None, :]
        want[..., rows[e]] = values[..., 2 * e:2 * e + 2]
        np.testing.assert_allclose(to_np(out), want, atol=1e-6)
