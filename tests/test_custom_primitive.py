"""A user's own candidate operations, defined and registered here (outside the package):
searched, derived, saved, plotted, retrained, saved as .keras and exported."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from swd_keras.fused_ops import CandidateOps, compute_candidates
from swd_keras.genotype import Genotype, derive_genotype
from swd_keras.ops import (
    OPS,
    PARAMETER_FREE,
    FusedKernel,
    check_primitives,
    import_primitives,
    make_op,
    register_primitive,
)
from swd_keras.optimizers import TorchSGD
from swd_keras.search import SWDSearchModel
from swd_keras.supernet import build_supernet
from tests import reference as ref

to_np = keras.ops.convert_to_numpy


@keras.saving.register_keras_serializable(package="test_custom_primitive")
class UserConvBN(keras.layers.Layer):
    """DARTS' ``conv_3x3``: ReLU, a bias-free 3x3 convolution, then BatchNorm."""

    def __init__(self, filters, strides=1, affine=True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.strides, self.affine = filters, strides, affine
        self.conv = keras.layers.Conv2D(filters, 3, strides, padding="same", use_bias=False,
                                        name="conv")
        self.bn = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, center=affine,
                                                  scale=affine, name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=None):
        return self.bn(self.conv(ops.relu(x)), training=training)

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "affine": self.affine}


@keras.saving.register_keras_serializable(package="test_custom_primitive")
class UserMinPool(keras.layers.Layer):
    """A parameter-free 3x3 minimum pool."""

    def __init__(self, strides=1, **kwargs):
        super().__init__(**kwargs)
        self.strides = strides

    def call(self, x, training=None):
        return -ops.max_pool(-x, 3, self.strides, padding="same")

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        return (b, -(-h // self.strides), -(-w // self.strides), c)

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


register_primitive("user_conv_3x3",
                   lambda c, s, affine, **kw: UserConvBN(c, s, affine, **kw))
register_primitive("user_min_pool_3x3", lambda c, s, affine, **kw: UserMinPool(s, **kw),
                   parameter_free=True)

PRIMITIVES = ("sep_conv_3x3", "user_conv_3x3", "skip_connect", "user_min_pool_3x3",
              "max_pool_3x3", "none")
# The search test's space: fused built-ins (skip_connect, max_pool_3x3) and the user's
# ops in one edge, kept small because tracing the bilevel step is the slow part.
SEARCH_PRIMITIVES = ("user_conv_3x3", "skip_connect", "user_min_pool_3x3", "max_pool_3x3",
                     "none")


def conv_3x3(x, kernel, stride):
    """NumPy: a 'same' 3x3 convolution, kernel (3, 3, cin, cout)."""
    b, h, w, _ = x.shape
    oh, ow = -(-h // stride), -(-w // stride)
    xp = np.pad(x, ((0, 0), ref.same_padding(h, 3, stride), ref.same_padding(w, 3, stride),
                    (0, 0)))
    return sum(xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
               @ kernel[i, j] for i in range(3) for j in range(3))


def test_registry_answers_in_one_line():
    assert "user_conv_3x3" in OPS and OPS["user_min_pool_3x3"].parameter_free
    assert "user_min_pool_3x3" in PARAMETER_FREE and "user_conv_3x3" not in PARAMETER_FREE
    with pytest.raises(ValueError, match=r"Unknown primitive.*'conv_9x9'.*user_conv_3x3"):
        check_primitives(["sep_conv_3x3", "conv_9x9"])
    with pytest.raises(ValueError, match="already registered.*override=True"):
        register_primitive("user_conv_3x3", OPS["user_conv_3x3"].factory)
    with pytest.raises(ValueError, match="factory must be callable"):
        register_primitive("user_other", None)
    with pytest.raises(ValueError, match="kind must be one of"):
        FusedKernel("conv", 3)
    with pytest.raises(ValueError, match="odd size"):
        FusedKernel("sep_conv", 4)
    register_primitive("user_skip", OPS["skip_connect"].factory, parameter_free=True,
                       fused=FusedKernel("skip"))
    with pytest.raises(ValueError, match="one skip connection"):
        CandidateOps(4, 1, ("skip_connect", "user_skip"))
    with pytest.raises(ValueError, match="not found"):
        import_primitives("no_such_module_of_primitives")
    with pytest.raises(ValueError, match="does not exist"):
        import_primitives("no/such/primitives.py")


def test_a_primitives_file_is_imported_once(tmp_path):
    source = tmp_path / "user_ops_file.py"
    source.write_text(
        "from swd_keras.ops import Identity, register_primitive\n"
        "register_primitive('user_identity', lambda c, s, affine, **kw: Identity(**kw),"
        " parameter_free=True)\n")
    module = import_primitives(str(source))
    assert import_primitives(str(source)) is module  # not registered twice
    assert "user_identity" in PARAMETER_FREE
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / source.name).write_text("")
    with pytest.raises(ValueError, match="rename one"):
        import_primitives(str(tmp_path / "other" / source.name))


@pytest.mark.backend
@pytest.mark.parametrize("stride", [1, 2])
def test_per_op_edges_equal_their_ops(stride):
    """Two edges computed together: each per-op block equals the NumPy op on that edge's
    channels, in op-major order after the fused ops, with BatchNorm on batch
    statistics; the fused ops' blocks equal those of each edge alone."""
    rng = np.random.default_rng(3)
    c, edges = 4, 2
    x = rng.normal(size=(3, 8, 8, edges * c)).astype("float32")
    layers = [CandidateOps(c, stride, PRIMITIVES) for _ in range(edges)]
    for layer in layers:
        layer.build((3, 8, 8, c))
        for v in layer.trainable_weights:
            v.assign(rng.normal(size=v.shape).astype("float32") * 0.5)
    order = layers[0].feature_primitives
    assert order[-2:] == ("user_conv_3x3", "user_min_pool_3x3")  # after the fused ops
    assert "none" not in order and set(order) == set(PRIMITIVES) - {"none"}
    features = to_np(compute_candidates(layers, ops.convert_to_tensor(x), training=True))
    oh = -(-8 // stride)
    assert features.shape == (3, oh, oh, len(order) * edges * c)
    for e, layer in enumerate(layers):
        part = x[..., e * c:(e + 1) * c]
        (kernel,) = [to_np(v.value) for v in layer.op_weights("user_conv_3x3").values()]
        conv = conv_3x3(np.maximum(part, 0), kernel, stride)
        expected = {
            "user_conv_3x3": (conv - conv.mean(axis=(0, 1, 2)))
            / np.sqrt(conv.var(axis=(0, 1, 2)) + 1e-5),
            "user_min_pool_3x3": -ref.pool(-part, "max", stride)}
        alone = to_np(layer(ops.convert_to_tensor(part), training=True))
        for p, want in expected.items():
            o = order.index(p)
            got = features[..., (o * edges + e) * c:(o * edges + e + 1) * c]
            np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=p)
        computed = layer.computed_primitives
        for p in ("sep_conv_3x3", "skip_connect", "max_pool_3x3"):
            o = order.index(p)
            np.testing.assert_allclose(
                features[..., (o * edges + e) * c:(o * edges + e + 1) * c],
                alone[..., computed.index(p) * c:(computed.index(p) + 1) * c],
                atol=1e-4, rtol=1e-4, err_msg=p)
    # The per-op layer is the edge's own: its variables and its BatchNorm statistics.
    conv_layer = layers[0].per_op_layers[0]
    assert all(any(v is w for w in layers[0].weights) for v in conv_layer.weights)
    assert np.abs(to_np(conv_layer.bn.moving_mean.value)).sum() > 0


def _forced_weights(cells, primitives):
    """Edge weights under which derivation picks the user's ops: the conv on even
    edges, the parameter-free pool on odd ones (four of each per cell)."""
    weights = np.full((cells, 14, len(primitives)), 0.1)
    weights[:, ::2, primitives.index("user_conv_3x3")] = 1.0
    weights[:, 1::2, primitives.index("user_min_pool_3x3")] = 1.0
    return weights


def test_search_derive_retrain_save_and_export_a_users_primitive(tmp_path):
    from swd_keras.export import export_savedmodel
    from swd_keras.network import build_network, cells_of, load_network
    from swd_keras.plot import plot_genotype
    from swd_keras.training import save_model

    net = build_supernet((8, 8, 1), 3, channels=4, layers=2, k=2,
                         primitives=SEARCH_PRIMITIVES)
    model = SWDSearchModel(net)
    model.compile(weights_optimizer=TorchSGD(0.05, momentum=0.9),
                  attention_optimizer=TorchSGD(0.05, momentum=0.9))
    rng = np.random.default_rng(0)
    images = rng.normal(size=(8, 8, 8, 1)).astype("float32")
    labels = rng.integers(0, 3, 8).astype("int32")
    data = tf.data.Dataset.from_tensor_slices(((images, labels), (images, labels))).batch(4)
    conv = [v for v in model.weight_variables if "user_conv_3x3" in v.path]
    assert conv  # the user's op trains with the supernet's weights
    before = [to_np(v.value).copy() for v in conv]
    model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
    assert any(np.abs(to_np(v.value) - b).max() > 0 for v, b in zip(conv, before))
    assert model.edge_weights().shape == (2, 14, len(SEARCH_PRIMITIVES))
    assert model.genotype().primitives == SEARCH_PRIMITIVES

    genotype = derive_genotype(_forced_weights(2, SEARCH_PRIMITIVES), normalize=False,
                               primitives=SEARCH_PRIMITIVES)
    assert {op for cell in genotype.cells for op, _ in cell.edges} == {
        "user_conv_3x3", "user_min_pool_3x3"}
    assert genotype.parameter_free_counts() == [4, 4]  # the min pools count
    path = genotype.save(tmp_path / "genotype.json")
    assert Genotype.load(path) == genotype
    plot_genotype(genotype, tmp_path / "genotype.png")
    assert (tmp_path / "genotype.png").stat().st_size > 0

    network = build_network(genotype, (8, 8, 1), 3, channels=4, layers=3, auxiliary=False,
                            drop_path=0.0)
    edge_ops = [op for cell in cells_of(network) for op in cell.edge_ops]
    assert sum(isinstance(op, UserConvBN) for op in edge_ops) == 12
    assert sum(isinstance(op, UserMinPool) for op in edge_ops) == 12
    network.compile(optimizer=TorchSGD(0.05),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    network.fit(images, labels, batch_size=4, epochs=1, steps_per_epoch=1, verbose=0)
    expected = to_np(network.predict(images, verbose=0))
    saved = save_model(network, tmp_path / "run" / "model.keras")
    np.testing.assert_allclose(to_np(load_network(saved).predict(images, verbose=0)),
                               expected, atol=1e-5)

    # A fresh process finds the primitives by importing their module first.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    np.save(tmp_path / "images.npy", images)
    subprocess.run([sys.executable, "-c", (
        "import sys, numpy as np\n"
        "from swd_keras.ops import import_primitives\n"
        "import_primitives(sys.argv[1])\n"
        "from swd_keras.network import load_network\n"
        "from swd_keras.genotype import Genotype\n"
        "Genotype.load(sys.argv[3])\n"
        "model = load_network(sys.argv[2])\n"
        "np.save(sys.argv[4], np.asarray(model.predict(np.load(sys.argv[5]), verbose=0)))\n"),
        __file__, str(saved), str(path), str(tmp_path / "fresh.npy"),
        str(tmp_path / "images.npy")], check=True, env=env, capture_output=True)
    np.testing.assert_allclose(np.load(tmp_path / "fresh.npy"), expected, atol=1e-5)

    if keras.backend.backend() == "torch":
        return  # Keras exports SavedModels from TensorFlow and JAX only (test_export.py)
    result = export_savedmodel(saved, tmp_path / "savedmodels", mean=(0.5,), std=(0.25,),
                               pixel_max=1.0, verbose=False)
    assert result.max_abs_diff <= 1e-4  # served without keras, against Keras' predictions


def test_make_op_builds_a_users_op_for_retraining():
    op = make_op("user_conv_3x3", 4, 2, affine=True, name="edge0_user_conv_3x3")
    assert isinstance(op, UserConvBN) and op.name == "edge0_user_conv_3x3" and op.affine
    assert tuple(op.compute_output_shape((2, 8, 8, 4))) == (2, 4, 4, 4)
