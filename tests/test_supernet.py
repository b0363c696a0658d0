"""The search network: shapes, cells, reductions, attention variables, DARTS baseline."""

import keras
import numpy as np
import pytest

from swd_keras.attention import LowerAttention, UpperAttention
from swd_keras.mixed_op import SWDMixedOp
from swd_keras.search_cell import NUM_EDGES, SearchCell, edge_inputs
from swd_keras.supernet import attention_variables, build_supernet

SMALL_OPS = ("sep_conv_3x3", "skip_connect", "max_pool_3x3", "none")


def cells(model):
    return [layer for layer in model.layers if isinstance(layer, SearchCell)]


@pytest.mark.parametrize("input_shape,layers", [((8, 8, 1), 3), ((32, 32, 3), 5), ((16, 16, 2), 4)])
def test_shapes_reductions_and_channels(input_shape, layers):
    net = build_supernet(input_shape, 7, channels=4, layers=layers, k=2, primitives=SMALL_OPS)
    logits, weights = net(np.zeros((2, *input_shape), "float32"))
    assert tuple(logits.shape) == (2, 7)
    assert tuple(weights.shape) == (layers, NUM_EDGES, len(SMALL_OPS))
    reductions = {layers // 3, 2 * layers // 3}
    c, size = 4, input_shape[0]
    for index, cell in enumerate(cells(net)):
        if index in reductions:
            c, size = 2 * c, size // 2
        assert cell.reduction == (index in reductions)
        assert cell.channels == c
        assert [e.strides for e in cell.edges] == [
            2 if cell.reduction and source < 2 else 1 for source in edge_inputs()]
        assert tuple(cell.output[0].shape[1:]) == (size, size, 4 * c)


def test_edge_order_is_darts_order():
    assert edge_inputs() == [0, 1, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4]


def test_every_cell_has_its_own_attention():
    net = build_supernet((8, 8, 1), 10, channels=4, layers=3, k=2, primitives=SMALL_OPS)
    variables = attention_variables(net)
    # UA and LA: W1, b1, W2, b2 each, on every one of the 3 x 14 edges.
    assert len(variables) == 3 * NUM_EDGES * 8
    assert len({v.path for v in variables}) == len(variables)
    weights = net(np.random.randn(2, 8, 8, 1).astype("float32"))[1]
    weights = keras.ops.convert_to_numpy(weights)
    assert (weights > 0).all() and not np.allclose(weights[0], weights[2])


def test_darts_method_shares_alphas_per_cell_type():
    net = build_supernet((8, 8, 1), 10, channels=4, layers=3, k=4, method="darts",
                         primitives=SMALL_OPS)
    variables = attention_variables(net)
    assert sorted(v.path.split("/")[0] for v in variables) == ["alphas_normal", "alphas_reduce"]
    assert all(e.op_channels == e.channels for cell in cells(net) for e in cell.edges)
    weights = keras.ops.convert_to_numpy(net(np.zeros((1, 8, 8, 1), "float32"))[1])
    np.testing.assert_allclose(weights[1], weights[2])  # both reduction cells (1 and 2 of 3)
    assert not np.allclose(weights[0], weights[1])
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-6)


def test_ablation_switches_reach_every_edge():
    net = build_supernet((8, 8, 1), 10, channels=4, layers=2, k=2, primitives=SMALL_OPS,
                         upper_attention=False, lower_attention=False, ua_pooling="max")
    edges = [e for cell in cells(net) for e in cell.edges]
    assert all(e.upper is None and e.lower is None and e.alphas is not None for e in edges)
    assert len(attention_variables(net)) == len(edges)


@pytest.mark.parametrize("kwargs,match", [
    (dict(k=3), r"k=3.*c=4"),
    (dict(method="enas"), "method must be one of"),
    (dict(layers=0), "layers must be at least 1"),
    (dict(k=4), "reduction edges need at least 2"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
    settings = dict(channels=4, layers=3, k=2, primitives=SMALL_OPS) | kwargs
    with pytest.raises(ValueError, match=match):
        build_supernet((8, 8, 1), 10, **settings)


def test_edges_are_swd_mixed_ops_with_search_settings():
    net = build_supernet((8, 8, 1), 10, channels=4, layers=1, k=2, la_pooling="avg+max")
    edge = cells(net)[0].edges[0]
    assert isinstance(edge, SWDMixedOp)
    assert edge.affine is False and edge.lower.pooling == "avg+max" and edge.k == 2


def _cell_outputs(cell, x):
    out, atten = cell(x, x, training=False)
    return keras.ops.convert_to_numpy(out), keras.ops.convert_to_numpy(atten)


@pytest.mark.parametrize("layer_class", [UpperAttention, LowerAttention])
def test_search_cell_computes_with_the_attention_layers(monkeypatch, layer_class):
    # What the layers compute is what the cell computes: changing a layer's MLP changes
    # the cell's output and edge weights, and each edge alone still equals its group.
    cell = SearchCell(4, reduction=False, reduction_prev=False, primitives=SMALL_OPS, k=2)
    x = np.random.randn(2, 8, 8, 6).astype("float32")
    before = _cell_outputs(cell, x)
    mlp = layer_class.mlp
    monkeypatch.setattr(layer_class, "mlp", classmethod(
        lambda cls, layers, pooled: -3.0 * mlp.__func__(cls, layers, pooled)))
    after = _cell_outputs(cell, x)
    assert not np.allclose(before[0], after[0], atol=1e-3)
    assert not np.allclose(before[1], after[1], atol=1e-3)
    for e, preprocess in enumerate((cell.preprocess0, cell.preprocess1)):
        _, atten = cell.edges[e](preprocess(x, training=False), training=False,
                                 return_edge_weights=True)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(atten), after[1][e], atol=1e-5)


def test_cell_edges_keep_their_variable_paths():
    net = build_supernet((8, 8, 1), 10, channels=4, layers=3, k=2, primitives=SMALL_OPS)
    cell = cells(net)[0]
    assert cell.edges[3].upper.w1.path == "cell_0/edge_3/upper/w1"
    assert [len(g.edges) for g in cell.groups] == [8, 3, 2, 1]
    paths = [v.path for v in net.weights]
    assert len(paths) == len(set(paths))
    assert not any("group" in path for path in paths)
