"""EdgeGroup (several edges at once, the search cell's fast path) against calling each
SWDMixedOp: outputs, edge weights, BatchNorm statistics and gradients."""

import keras
import numpy as np
import pytest

from swd_keras.edge_group import EdgeGroup
from swd_keras.mixed_op import SWDMixedOp
from tests.grads import input_gradient, layer_gradients

to_np = keras.ops.convert_to_numpy

SHARED = (0, 1, 0, 2, 0)
"""Five edges on three inputs: three share input 0, inputs 1 and 2 have one each."""


def randomize(layer, rng):
    """Random kernels, biases and moving statistics (variances positive)."""
    for v in layer.weights:
        values = rng.uniform(0.5, 2.0, size=v.shape) if "variance" in v.path else (
            rng.normal(size=v.shape) * 0.5)
        v.assign(values.astype("float32"))


class EdgeSet(keras.layers.Layer):
    """Edges reading slices of one input tensor, computed by one EdgeGroup or by
    calling each edge."""

    def __init__(self, together, stride, sources, **options):
        super().__init__()
        self.together, self.sources = together, list(sources)
        self.edges = [SWDMixedOp(8, stride, name=f"edge_{i}", **options)
                      for i in range(len(sources))]
        self.group = EdgeGroup(self.edges, self.sources, name="group")

    def build(self, x_shape):
        for edge in self.edges:
            edge.build(tuple(x_shape[:3]) + (8,))

    def call(self, x, edge_weights=None, training=None):
        inputs = keras.ops.split(x, max(self.sources) + 1, axis=-1)
        if self.together:
            results = self.group(inputs, edge_weights=edge_weights, training=training)
        else:
            weights = edge_weights or [None] * len(self.edges)
            results = [edge(inputs[s], edge_weights=w, training=training,
                            return_edge_weights=True)
                       for edge, s, w in zip(self.edges, self.sources, weights)]
        return (keras.ops.concatenate([out for out, _ in results], axis=-1),
                keras.ops.stack([atten for _, atten in results]))


SUBSET = ("none", "sep_conv_5x5", "avg_pool_3x3", "dil_conv_3x3", "sep_conv_3x3")
EDGE_OPTIONS = {
    "swd": {"k": 2},
    "k=1": {"k": 1},  # 5 edges x 2 ops x 8 channels: batched matrix products
    "pooling": {"k": 4, "ua_pooling": "max", "la_pooling": "avg+max", "use_bias": False},
    "la_off": {"k": 2, "lower_attention": False, "affine": True},
    "none_first": {"k": 2, "primitives": SUBSET},
    "none_between": {"k": 2, "primitives": ("skip_connect", "max_pool_3x3", "none",
                                            "sep_conv_3x3")},
    "none_alone": {"k": 2, "primitives": ("none",)},
    "ua_off": {"upper_attention": False, "primitives": SUBSET},
    "shared_alphas": {"upper_attention": False, "lower_attention": False,
                      "shared_alphas": True,
                      "primitives": ("max_pool_3x3", "dil_conv_5x5", "skip_connect")},
}
CASES = ([(name, SHARED) for name in EDGE_OPTIONS]
         + [(name, (0,)) for name in ("swd", "shared_alphas")])
# Run once per backend: one case of each code path (SWD, LA off, UA off, shared alphas,
# `none` among the ops) at the strides named: SWD's at both, each other path at one,
# the two strides taking turns; the rest differ in shapes only, and eager JAX takes
# ~30 s a case.
BACKEND_CASES = {"swd": (1, 2), "la_off": (1,), "ua_off": (2,), "shared_alphas": (1,),
                 "none_between": (2,)}


def _case(stride, name, sources):
    marks = ([pytest.mark.backend]
             if stride in BACKEND_CASES.get(name, ()) and len(sources) > 1 else [])
    return pytest.param(stride, name, sources, marks=marks,
                        id=f"{stride}-{name}-{'one' if len(sources) == 1 else 'shared'}")


@pytest.mark.parametrize("stride,name,sources", [
    _case(stride, name, sources) for name, sources in CASES for stride in (1, 2)])
def test_group_equals_calling_each_edge(stride, name, sources):
    options = EDGE_OPTIONS[name]
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 8, 8, 8 * (max(sources) + 1))).astype("float32")
    sets = [EdgeSet(together, stride, sources, **options) for together in (True, False)]
    for edge_set in sets:
        edge_set.build(x.shape)
    randomize(sets[0], rng)
    sets[1].set_weights(sets[0].get_weights())
    edge_weights = None
    if options.get("shared_alphas"):
        n = len(options["primitives"])
        edge_weights = [keras.ops.convert_to_tensor(rng.dirichlet(np.ones(n)).astype("float32"))
                        for _ in sources]

    for training in (True, False):
        (out, atten), (want_out, want_atten) = (
            edge_set(x, edge_weights=edge_weights, training=training) for edge_set in sets)
        assert tuple(out.shape) == (3, 8 // stride, 8 // stride, 8 * len(sources))
        np.testing.assert_allclose(to_np(out), to_np(want_out), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(to_np(atten), to_np(want_atten), atol=1e-5)
        for got, want in zip(sets[0].get_weights(), sets[1].get_weights()):
            np.testing.assert_allclose(got, want, atol=1e-5)  # BN statistics included

    weights = keras.ops.convert_to_tensor(rng.normal(size=out.shape).astype("float32"))
    grads = [layer_gradients(edge_set, lambda pair: keras.ops.sum(pair[0] * weights), x,
                             edge_weights=edge_weights, training=True)
             for edge_set in sets]
    paths = {v.path: w.path for v, w in zip(sets[0].trainable_weights,
                                            sets[1].trainable_weights)}
    assert paths
    nonzero = 0
    for path, twin in paths.items():
        np.testing.assert_allclose(grads[0][path], grads[1][twin], atol=1e-4, rtol=1e-4,
                                   err_msg=path)
        nonzero += bool(np.abs(grads[1][twin]).sum() > 0)
    assert nonzero > 0
    # Inference mode: the moving statistics are read, not assigned, inside the gradient.
    input_grads = [input_gradient(
        lambda t, s=edge_set: keras.ops.sum(s(t, edge_weights=edge_weights,
                                              training=False)[0] * weights), x)
        for edge_set in sets]
    np.testing.assert_allclose(input_grads[0], input_grads[1], atol=1e-4, rtol=1e-4)
    assert np.abs(input_grads[1]).sum() > 0


@pytest.mark.backend
def test_edge_weights_carry_no_gradient():
    x = np.random.randn(2, 8, 8, 16).astype("float32")
    edge_set = EdgeSet(True, 1, SHARED[:3])
    edge_set.build(x.shape)
    grads = layer_gradients(edge_set, lambda pair: keras.ops.sum(pair[1]), x, training=True)
    assert grads and all(not g.any() for g in grads.values())


def test_group_builds_its_edges_and_checks_its_arguments():
    edges = [SWDMixedOp(8, k=2) for _ in range(2)]
    x = np.random.randn(2, 4, 4, 8).astype("float32")
    group = EdgeGroup(edges, sources=[0, 0])
    (out, atten), _ = group([x])  # unbuilt edges are built first
    assert all(edge.built for edge in edges)
    # The group reads its edges' variables and has none of its own.
    assert {v.path for v in group.weights} == {v.path for e in edges for v in e.weights}
    np.testing.assert_allclose(to_np(out), to_np(edges[0](x)), atol=1e-5)
    assert tuple(atten.shape) == (8,)
    with pytest.raises(ValueError, match="reads inputs"):
        EdgeGroup(edges)([x])
    with pytest.raises(ValueError, match="2 edges and 1 sources"):
        EdgeGroup(edges, sources=[0])
    with pytest.raises(ValueError, match="one configuration"):
        EdgeGroup([SWDMixedOp(8, k=2), SWDMixedOp(8, k=4)])
    with pytest.raises(ValueError, match="SWDMixedOp"):
        EdgeGroup([keras.layers.Dense(2)])
    shared = [SWDMixedOp(8, upper_attention=False, lower_attention=False,
                         shared_alphas=True) for _ in range(2)]
    with pytest.raises(ValueError, match="edge_weights"):
        EdgeGroup(shared)([x, x])


def test_config_round_trip():
    edges = [SWDMixedOp(8, 2, k=4, ua_pooling="avg", name=f"edge_{i}") for i in range(2)]
    group = EdgeGroup(edges, sources=[1, 0], name="group")
    clone = EdgeGroup.from_config(group.get_config())
    assert clone.get_config() == group.get_config()
    assert clone.sources == [1, 0]
    x0, x1 = (np.random.randn(2, 8, 8, 8).astype("float32") for _ in range(2))
    expected = group([x0, x1], training=False)
    for edge, twin in zip(clone.edges, edges):
        edge.build(x0.shape)
        edge.set_weights(twin.get_weights())
    for (out, atten), (want, want_atten) in zip(clone([x0, x1], training=False), expected):
        np.testing.assert_allclose(to_np(out), to_np(want), atol=1e-6)
        np.testing.assert_allclose(to_np(atten), to_np(want_atten), atol=1e-6)
