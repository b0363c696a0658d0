"""The retrain network: Cell, stacking, auxiliary head, drop path, parameter counts, saving."""

import keras
import numpy as np
import pytest

from swd_keras.cells import Cell
from swd_keras.genotype import CellGenotype, Genotype, get_genotype
from swd_keras.network import (
    AUX_LOGITS,
    LOGITS,
    AuxiliaryHead,
    build_network,
    cells_of,
    count_parameters,
    inference_model,
    load_network,
    stacking_plan,
)
from swd_keras.training import save_model


def _cell(edges, type="normal"):
    return CellGenotype(type, tuple(edges))


# ------------------------------------------------------------------------------- stacking


def test_swd_stacking_for_20_layers_is_6_1_6_1_6():
    genotype = get_genotype("swd_nas_paper")
    assert stacking_plan(genotype, 20) == (0,) * 6 + (1,) + (2,) * 6 + (3,) + (4,) * 6


def test_network_positions_cell_types_and_channels_for_20_layers():
    genotype = get_genotype("swd_nas_paper")
    c = 4
    model = build_network(genotype, (8, 8, 3), 10, channels=c, layers=20, auxiliary=False)
    cells = cells_of(model)
    assert len(cells) == 20
    expected_source = [0] * 6 + [1] + [2] * 6 + [3] + [4] * 6
    expected_channels = [c] * 6 + [2 * c] * 7 + [4 * c] * 7
    for position, cell in enumerate(cells):
        assert cell.genotype == genotype.cells[expected_source[position]], position
        assert cell.channels == expected_channels[position], position
        assert cell.is_reduction == (position in (6, 13))
        # The cell after a reduction preprocesses s0 with a FactorizedReduce.
        assert cell.reduction_prev == (position in (7, 14))
    # Output shapes: 8x8 -> 4x4 at cell 6 -> 2x2 at cell 13; 4 concatenated nodes.
    assert tuple(cells[5].compute_output_shape((None, 8, 8, 16), (None, 8, 8, 16))) == (
        None, 8, 8, 4 * c)
    assert model.get_layer("global_pooling").input.shape[1:] == (2, 2, 4 * 4 * c)


def test_swd_stacking_general_layers():
    genotype = get_genotype("swd_nas_paper")
    assert stacking_plan(genotype, 5) == (0, 1, 2, 3, 4)
    # layers=8: reductions at 8 // 3 = 2 and 16 // 3 = 5.
    assert stacking_plan(genotype, 8) == (0, 0, 1, 2, 2, 3, 4, 4)


def test_darts_stacking_repeats_normal_and_reduce():
    genotype = get_genotype("darts_v2")
    assert stacking_plan(genotype, 8) == (0, 0, 1, 0, 0, 1, 0, 0)
    assert stacking_plan(genotype, 20) == tuple(1 if i in (6, 13) else 0 for i in range(20))


def test_one_cell_per_position_when_counts_match():
    normal = _cell([("sep_conv_3x3", 0), ("skip_connect", 1)] * 4)
    reduce = _cell([("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4, "reduce")
    genotype = Genotype((normal, normal, reduce, normal, normal, reduce, normal, normal))
    assert stacking_plan(genotype, 8) == tuple(range(8))


@pytest.mark.parametrize("name, layers", [("swd_nas_paper", 4), ("swd_nas_paper", 3),
                                          ("darts_v2", 2)])
def test_cell_count_that_does_not_fit_layers_names_both(name, layers):
    genotype = get_genotype(name)
    with pytest.raises(ValueError, match=rf"{genotype.num_cells} cells .*layers={layers}"):
        stacking_plan(genotype, layers)


def test_three_cell_genotype_is_rejected_for_eight_layers():
    normal = _cell([("sep_conv_3x3", 0), ("skip_connect", 1)] * 4)
    reduce = _cell([("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4, "reduce")
    with pytest.raises(ValueError, match=r"3 cells .*layers=8"):
        build_network(Genotype((normal, reduce, normal)), (8, 8, 3), 10, 4, 8)


def test_cell_types_must_match_positions():
    normal = _cell([("sep_conv_3x3", 0), ("skip_connect", 1)] * 4)
    reduce = _cell([("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4, "reduce")
    with pytest.raises(ValueError, match="needs cell types"):
        stacking_plan(Genotype((reduce, normal)), 8)
    with pytest.raises(ValueError, match="needs cell types"):
        stacking_plan(Genotype((normal, reduce, reduce, normal, normal)), 20)


def test_build_network_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown genotype"):
        build_network("no_such_genotype", (8, 8, 3), 10)
    with pytest.raises(ValueError, match="head must be one of"):
        build_network("darts_v2", (8, 8, 3), 10, 4, 5, head="mnist")
    with pytest.raises(ValueError, match="input_shape"):
        build_network("darts_v2", (8, 8), 10, 4, 5)
    with pytest.raises(ValueError, match="drop_path"):
        build_network("darts_v2", (8, 8, 3), 10, 4, 5, drop_path=1.0)


# ------------------------------------------------------------------------- parameter counts

# Counted on the authors' PyTorch models (DARTS' NetworkCIFAR / NetworkImageNet with
# count_parameters_in_MB's rule: trainable parameters, auxiliary head excluded).
PUBLISHED_COUNTS = [
    ("darts_v2", (32, 32, 3), 10, 36, 20, "cifar", 3_349_342),
    ("swd_nas_paper", (32, 32, 3), 10, 36, 20, "cifar", 3_169_198),
    ("swd_nas_paper", (224, 224, 3), 1000, 48, 20, "imagenet", 6_280_192),
    ("darts_v2", (224, 224, 3), 1000, 48, 14, "imagenet", 4_718_752),
]


@pytest.mark.parametrize("genotype, shape, classes, channels, layers, head, expected",
                         PUBLISHED_COUNTS, ids=[f"{g}-{h}" for g, *_, h, _ in PUBLISHED_COUNTS])
def test_parameter_counts_equal_the_pytorch_models(genotype, shape, classes, channels, layers,
                                                   head, expected):
    model = build_network(genotype, shape, classes, channels, layers, head=head)
    assert count_parameters(model) == expected
    assert count_parameters(inference_model(model)) == expected


# ------------------------------------------------------------------------- auxiliary head


@pytest.mark.backend
def test_auxiliary_head_only_in_the_training_model():
    c, classes = 4, 10
    model = build_network("darts_v2", (32, 32, 3), classes, channels=c, layers=5)
    images = np.random.rand(2, 32, 32, 3).astype("float32")
    outputs = model(images, training=True)
    assert set(outputs) == {LOGITS, AUX_LOGITS}
    assert tuple(outputs[AUX_LOGITS].shape) == (2, classes)

    infer = inference_model(model)
    assert not isinstance(infer.output, dict)
    assert tuple(infer(images).shape) == (2, classes)
    assert not any(isinstance(layer, AuxiliaryHead) for layer in infer.layers)
    # The inference model shares the training model's weights, minus the auxiliary head.
    head = model.get_layer("auxiliary_head")
    head_ids = {id(w) for w in head.weights}
    assert {id(w) for w in infer.weights} == {id(w) for w in model.weights} - head_ids
    # DARTS' AuxiliaryHeadCIFAR on the second reduction's 8x8 output: 4 nodes x 4C channels.
    c_aux = 4 * 4 * c
    aux_params = (c_aux * 128 + 2 * 128 + 128 * 768 * 2 * 2 + 2 * 768
                  + 768 * classes + classes)
    assert count_parameters(model, include_auxiliary=True) - count_parameters(model) == aux_params

    no_aux = build_network("darts_v2", (32, 32, 3), classes, channels=c, layers=5,
                           auxiliary=False)
    assert inference_model(no_aux) is no_aux
    assert not any(isinstance(layer, AuxiliaryHead) for layer in no_aux.layers)


def test_imagenet_stem_and_auxiliary_head():
    c, classes = 8, 5
    model = build_network("darts_v2", (224, 224, 3), classes, channels=c, layers=5,
                          head="imagenet")
    cells = cells_of(model)
    # The stem reduces 224 -> 28; the first cell sees stem0's 56x56 output as s0.
    assert model.get_layer("stem1_bn").output.shape[1:] == (28, 28, c)
    assert model.get_layer("stem0_b_bn").output.shape[1:] == (56, 56, c)
    assert cells[0].reduction_prev
    head = model.get_layer("auxiliary_head")
    assert head.bn2 is None  # DARTS' ImageNet head has no BN after its 2x2 conv
    assert head.input.shape[1:3] == (7, 7)
    c_aux = 4 * 4 * c
    aux_params = c_aux * 128 + 2 * 128 + 128 * 768 * 4 + 768 * classes + classes
    assert count_parameters(model, include_auxiliary=True) - count_parameters(model) == aux_params


# ------------------------------------------------------------------------------ drop path


def _cell_inputs(shape=(8, 6, 6, 8)):
    rng = np.random.default_rng(0)
    return (rng.normal(size=shape).astype("float32"), rng.normal(size=shape).astype("float32"))


@pytest.mark.backend
def test_drop_path_never_touches_identity_edges():
    identity_cell = Cell(_cell([("skip_connect", 0), ("skip_connect", 1)] * 4), channels=4)
    s0, s1 = _cell_inputs()
    identity_cell.build(s0.shape, s1.shape)
    identity_cell.drop_path_rate.assign(0.0)
    reference = keras.ops.convert_to_numpy(identity_cell(s0, s1, training=True))
    identity_cell.drop_path_rate.assign(0.999)
    dropped = keras.ops.convert_to_numpy(identity_cell(s0, s1, training=True))
    np.testing.assert_allclose(dropped, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.backend
def test_drop_path_drops_whole_samples_of_other_ops_and_rescales():
    # Node 2 = identity(s0) + max_pool(s1): the pool's output is zeroed per sample with
    # probability p, else scaled by 1 / (1 - p); the identity term always passes.
    p = 0.5
    cell = Cell(_cell([("skip_connect", 0), ("max_pool_3x3", 1)] * 4), channels=4,
                drop_path_rate=p, seed=3)
    s0, s1 = _cell_inputs((64, 6, 6, 8))
    out = keras.ops.convert_to_numpy(cell(s0, s1, training=True))
    pre0 = keras.ops.convert_to_numpy(cell.preprocess0(s0, training=True))
    pre1 = keras.ops.convert_to_numpy(cell.preprocess1(s1, training=True))
    pooled = keras.ops.convert_to_numpy(cell.edge_ops[1](pre1))
    node = out[..., :4]
    dropped = np.all(np.isclose(node, pre0, atol=1e-5), axis=(1, 2, 3))
    kept = np.all(np.isclose(node, pre0 + pooled / (1 - p), atol=1e-4), axis=(1, 2, 3))
    assert np.all(dropped ^ kept)  # every sample is exactly one of the two
    assert 10 < dropped.sum() < 54  # about half of 64 (binomial, p = 0.5)
    # At inference nothing is dropped, whatever the rate.
    infer = keras.ops.convert_to_numpy(cell(s0, s1, training=False))
    pre0 = keras.ops.convert_to_numpy(cell.preprocess0(s0, training=False))
    pre1 = keras.ops.convert_to_numpy(cell.preprocess1(s1, training=False))
    expected = pre0 + keras.ops.convert_to_numpy(cell.edge_ops[1](pre1))
    np.testing.assert_allclose(infer[..., :4], expected, rtol=1e-5, atol=1e-5)


def test_reduction_cell_strides_only_the_input_edges():
    genotype = _cell([("sep_conv_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2),
                      ("dil_conv_3x3", 0), ("skip_connect", 3), ("skip_connect", 1),
                      ("avg_pool_3x3", 4), ("sep_conv_5x5", 2)], "reduce")
    cell = Cell(genotype, channels=4, reduction_prev=True)
    cell.build((None, 16, 16, 6), (None, 8, 8, 6))
    # Inputs 0, 1 are 8x8 after preprocessing, nodes 2.. are 4x4: every op outputs 4x4.
    sizes = [op.compute_output_shape((None, 8 if index < 2 else 4, 8 if index < 2 else 4, 4))[1]
             for op, (_, index) in zip(cell.edge_ops, genotype.edges)]
    assert sizes == [4] * 8
    # skip_connect from an input node at stride 2 is a FactorizedReduce, so drop path applies.
    assert [type(op).__name__ for op in cell.edge_ops][2] == "Identity"
    assert type(cell.edge_ops[5]).__name__ == "FactorizedReduce"
    assert type(cell.preprocess0).__name__ == "FactorizedReduce"
    assert tuple(cell.compute_output_shape((None, 16, 16, 6), (None, 8, 8, 6))) == (
        None, 4, 4, 16)


def test_cell_config_round_trip():
    genotype = get_genotype("swd_nas_paper").cells[1]
    cell = Cell(genotype, channels=6, reduction_prev=True, drop_path_rate=0.1, seed=7,
                name="cell_x")
    clone = Cell.from_config(cell.get_config())
    assert clone.genotype == genotype
    assert (clone.channels, clone.reduction_prev, clone.seed) == (6, True, 7)
    assert clone.initial_drop_path_rate == pytest.approx(0.1)


# ------------------------------------------------------------------------------ saving


@pytest.mark.backend
def test_keras_round_trip_gives_identical_outputs(tmp_path):
    model = build_network("swd_nas_paper", (16, 16, 3), 10, channels=4, layers=5,
                          drop_path=0.1)
    images = np.random.rand(4, 16, 16, 3).astype("float32")
    model(images, training=True)  # moves the BatchNorm statistics away from their init
    infer = inference_model(model)
    path = save_model(infer, tmp_path / "model.keras")
    loaded = load_network(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded.predict(images, verbose=0)),
                                  keras.ops.convert_to_numpy(infer.predict(images, verbose=0)))
    assert count_parameters(loaded) == count_parameters(infer)
    assert [c.genotype for c in cells_of(loaded)] == [c.genotype for c in cells_of(infer)]
    # A saved training model loads as its inference model.
    save_model(model, tmp_path / "train.keras")
    assert not isinstance(load_network(tmp_path / "train.keras").output, dict)


def test_load_network_rejects_files_that_are_not_models(tmp_path):
    fake = tmp_path / "model.keras"
    fake.write_text("not a zip")
    with pytest.raises(ValueError, match="not a loadable Keras model"):
        load_network(fake)
    with pytest.raises(ValueError, match="no such model file"):
        load_network(tmp_path / "missing.keras")
    other = tmp_path / "genotype.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="expected a .keras file"):
        load_network(other)
