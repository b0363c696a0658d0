"""Test accuracy of a trained network: top-k over a dataset, counted in NumPy."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from swd_keras.network import inference_model


def evaluate_network(model: keras.Model, dataset, top_k: tuple[int, ...] = (1,)) -> dict:
    """Top-k accuracies of ``model`` over a dataset of ``(x, y)`` batches.

    Args:
        model: an inference model (logits output); a training model is reduced with
            ``inference_model``.
        dataset: an iterable of ``(images, labels)`` batches (a ``tf.data.Dataset``).
        top_k: which accuracies to report (e.g. ``(1, 5)``).

    Returns:
        ``{"top1": ..., "top5": ..., "examples": n}`` (one ``topK`` key per ``top_k``).
    """
    model = inference_model(model)
    correct = dict.fromkeys(top_k, 0)
    examples = 0
    batches = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    for images, labels in batches:
        # predict, not predict_on_batch: under a tf.distribute strategy Keras 3's
        # predict_on_batch hands every replica the whole batch (and concatenates them).
        logits = ops.convert_to_numpy(model.predict(images, batch_size=len(images),
                                                    verbose=0))
        labels = np.asarray(labels).reshape(-1)
        # Rank of the true class: how many classes score strictly higher.
        true_scores = logits[np.arange(len(labels)), labels]
        ranks = (logits > true_scores[:, None]).sum(axis=1)
        for k in top_k:
            correct[k] += int((ranks < k).sum())
        examples += len(labels)
    if examples == 0:
        raise ValueError("the evaluation dataset is empty.")
    return {**{f"top{k}": correct[k] / examples for k in top_k}, "examples": examples}
