"""A ``Source`` over arrays in memory: uint8 images, one array for all splits."""

from __future__ import annotations

import numpy as np

from swd_keras.data.augment import Preprocessing
from swd_keras.data.info import DatasetInfo
from swd_keras.data.sources import Source
from swd_keras.data.splits import SALT_SEARCH_SPLIT, ArraySplit, ArrayStore, stratified_parts


def array_source(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    num_classes: int,
    preprocessing: Preprocessing,
) -> Source:
    """The source of ``images``/``labels``; its search halves are a stratified 50/50
    split of ``train_indices`` drawn with the run's seed."""
    store = ArrayStore(images, labels)
    train_indices = np.asarray(train_indices, np.int64)
    train_labels = labels[train_indices]

    def search_halves(seed: int) -> tuple[ArraySplit, ArraySplit]:
        rng = np.random.default_rng([seed, SALT_SEARCH_SPLIT])
        first, second = stratified_parts(train_labels, 2, rng)
        return ArraySplit(store, train_indices[first]), ArraySplit(store, train_indices[second])

    info = DatasetInfo(
        name=name,
        input_shape=tuple(int(d) for d in images.shape[1:]),
        num_classes=num_classes,
        num_train=len(train_indices),
        num_val=len(train_indices) // 2,
        num_test=len(test_indices),
        mean=tuple(float(m) for m in preprocessing.mean),
        std=tuple(float(s) for s in preprocessing.std),
    )
    return Source(
        info=info,
        preprocessing=preprocessing,
        train=ArraySplit(store, train_indices),
        test=ArraySplit(store, test_indices),
        search_halves=search_halves,
    )


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images`` (last axis: channels)."""
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return tuple(flat.mean(axis=0).tolist()), tuple(flat.std(axis=0).tolist())
