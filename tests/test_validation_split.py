"""The validation split a tuning trial is scored on (``validation=``): set aside from the
training split, stratified, the same for every seed, unseen by the search halves and the
retraining, and scored into ``results.json``."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from sklearn.datasets import load_digits

from swd_keras.data import search_data, train_data
from swd_keras.data.sources import load


def _indices(split) -> set[int]:
    return set(split.indices.tolist())


def test_validation_is_stratified_disjoint_and_the_same_for_every_seed():
    whole = load("digits", None)
    source = load("digits", None, validation=0.2)
    train, validation = _indices(source.train), _indices(source.validation)
    assert train.isdisjoint(validation)
    assert train | validation == _indices(whole.train)  # nothing else moved
    assert _indices(source.test) == _indices(whole.test)  # the test split is untouched
    # Per class, round(0.2 * count) examples, as NumPy counts them.
    labels = whole.train.store.labels
    held = labels[sorted(validation)]
    for label in np.unique(labels[whole.train.indices]):
        count = int(np.sum(labels[whole.train.indices] == label))
        assert int(np.sum(held == label)) == int(round(0.2 * count))
    # The search halves of any seed split exactly the rest.
    for seed in (0, 5):
        first, second = (_indices(half) for half in source.search_halves(seed))
        assert first.isdisjoint(second) and first | second == train
    assert _indices(load("digits", None, validation=0.2).validation) == validation
    assert source.info.num_train == len(train)


def test_the_pipelines_leave_the_validation_examples_out():
    data = train_data("digits", batch_size=32, validation=0.1, augment=False)
    search = search_data("digits", batch_size=32, validation=0.1, augment=False)
    digits = load_digits()
    assert data.num_examples + data.num_validation_examples == 1797 - data.num_test_examples
    assert search.num_train_examples + search.num_val_examples == data.num_examples

    def as_rows(dataset) -> set[bytes]:
        return {np.round(x, 4).tobytes() for batch, _ in dataset.as_numpy_iterator()
                for x in batch}

    validation = as_rows(data.validation_dataset())
    assert len(validation) <= data.num_validation_examples
    # Every example the search halves and the retraining read in an epoch.
    trained = {np.round(image, 4).tobytes()
               for halves in search.dataset.take(search.steps_per_epoch).as_numpy_iterator()
               for images, _ in halves for image in images}
    trained |= as_rows(data.dataset.take(data.steps_per_epoch))
    assert validation.isdisjoint(trained)
    # The validation images are digits' own pixels, normalised with the run's statistics.
    info = data.info
    pixels = digits.images.reshape(-1, 8, 8, 1) / 16.0
    normalised = {np.round((p - info.mean[0]) / info.std[0], 4).astype(np.float32).tobytes()
                  for p in pixels}
    assert validation <= normalised


def test_validation_is_refused_when_it_leaves_a_class_empty_or_is_out_of_range():
    with pytest.raises(ValueError, match="validation must be a fraction in"):
        train_data("digits", batch_size=32, validation=1.0)
    with pytest.raises(ValueError, match="validation"):
        train_data("digits", batch_size=32, validation=-0.1)
    with pytest.raises(ValueError, match="no validation split"):
        train_data("digits", batch_size=32).validation_dataset()


@pytest.mark.slow
def test_results_record_the_validation_accuracy_as_numpy_recomputes_it(tmp_path):
    from swd_keras.network import load_network
    from swd_keras.training import RetrainConfig, fit_network

    config = RetrainConfig("darts_v2", "synthetic", epochs=1, batch_size=16, channels=4,
                           layers=3, limit=48, validation=0.25, auxiliary=False)
    results = fit_network(tmp_path / "run", config, verbose=0)
    data = train_data("synthetic", batch_size=16, validation=0.25, limit=48)
    model = load_network(tmp_path / "run" / "model.keras")
    correct = total = 0
    for x, y in data.validation_dataset().as_numpy_iterator():
        probabilities = keras.ops.convert_to_numpy(model(x, training=False))
        correct += int(np.sum(np.argmax(probabilities, axis=-1) == y))
        total += len(y)
    assert results["val_examples"] == total == data.num_validation_examples
    assert results["val_top1"] == pytest.approx(correct / total)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["val_top1"] == \
        results["val_top1"]
    assert "val_top1" not in fit_network(tmp_path / "plain", RetrainConfig(
        "darts_v2", "synthetic", epochs=1, batch_size=16, channels=4, layers=3, limit=32,
        auxiliary=False), verbose=0)
