"""Search-job pieces that need no compiled step: config checks, precision, schedule."""

import keras
import numpy as np
import pytest

from swd_keras.optimizers import EpochCosineDecay
from swd_keras.search_job import SearchConfig, build_search_model


@pytest.mark.parametrize("changes,match", [
    ({"precision": "float16"}, "precision must be one of"),
    ({"k": 3}, "k=3 must divide"),
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"dataset": "mnist"}, "dataset must be one of"),
    ({"channels": 4, "k": 4}, "reduction edges need at least 2"),
])
def test_config_validation_names_the_setting(changes, match):
    with pytest.raises(ValueError, match=match):
        SearchConfig(**changes).validate()


def test_mixed_bfloat16_computes_in_bfloat16_with_float32_variables():
    config = SearchConfig(channels=4, layers=1, k=2, precision="mixed_bfloat16")
    model = build_search_model(config, (8, 8, 1), 10, steps_per_epoch=2)
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    logits, weights = model(np.zeros((2, 8, 8, 1), "float32"), training=False)
    assert keras.backend.standardize_dtype(logits.dtype) == "bfloat16"
    assert keras.backend.standardize_dtype(weights.dtype) == "float32"
    assert {v.dtype for v in model.trainable_variables} == {"float32"}


@pytest.mark.parametrize("remat, expected", [
    (False, [False] * 5), (True, [True] * 5), ("none", [False] * 5), ("all", [True] * 5),
    # The cells up to the first reduction (cell 1 of 5) read full-resolution inputs.
    ("first-stage", [True, True, False, False, False]),
    ("auto", [keras.backend.backend() == "tensorflow"] * 2 + [False] * 3)])
def test_remat_setting_reaches_its_cells(remat, expected):
    from swd_keras.search_cell import SearchCell

    config = SearchConfig(channels=4, layers=5, k=2, remat=remat).validate()
    model = build_search_model(config, (8, 8, 1), 10, steps_per_epoch=2)
    cells = [layer for layer in model.supernet.layers if isinstance(layer, SearchCell)]
    assert [cell.rematerialize for cell in cells] == expected
    # A run folder written before the setting existed resumes with the default.
    assert SearchConfig.from_json({"channels": 8}).remat == "auto"


def test_attention_reduction_ratios_reach_every_edge():
    from swd_keras.search_cell import SearchCell

    config = SearchConfig(channels=8, layers=2, k=2, ua_reduction=4, la_reduction=2)
    model = build_search_model(config.validate(), (8, 8, 1), 10, steps_per_epoch=2)
    edges = [edge for layer in model.supernet.layers if isinstance(layer, SearchCell)
             for edge in layer.edges]
    assert len(edges) == 28
    assert {(edge.upper.reduction, edge.lower.reduction) for edge in edges} == {(4, 2)}
    assert SearchConfig.from_json({"channels": 8}).ua_reduction == 2  # SPEC's defaults
    with pytest.raises(ValueError, match="ua_reduction and la_reduction must be at least 1"):
        SearchConfig(ua_reduction=0)


def test_remat_rejects_an_unknown_setting():
    from swd_keras.supernet import build_supernet

    with pytest.raises(ValueError, match="remat must be one of .*'first-stage'"):
        SearchConfig(remat="some").validate()
    with pytest.raises(ValueError, match="rematerialize must be one of"):
        build_supernet((8, 8, 1), 10, channels=4, layers=2, k=2, rematerialize="some")


def test_epoch_cosine_decay_matches_pytorch_cosine_annealing():
    schedule = EpochCosineDecay(0.025, 0.001, epochs=4, steps_per_epoch=3)
    got = [float(keras.ops.convert_to_numpy(schedule(step))) for step in range(12)]
    # torch.optim.lr_scheduler.CosineAnnealingLR, stepped once per epoch.
    expected = [0.001 + 0.024 * (1 + np.cos(np.pi * (step // 3) / 4)) / 2 for step in range(12)]
    np.testing.assert_allclose(got, expected, rtol=1e-6)
