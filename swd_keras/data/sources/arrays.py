"""A ``Source`` over an indexed store: uint8 images in memory (one array for all splits)
or files read from disk by index (``folder.FileStore``)."""

from __future__ import annotations

import functools

import numpy as np

from swd_keras.data.augment import Preprocessing
from swd_keras.data.info import DatasetInfo
from swd_keras.data.sources import Source
from swd_keras.data.splits import SALT_SEARCH_SPLIT, ArraySplit, ArrayStore, stratified_parts


def array_source(
    name: str,
    images: np.ndarray | None,
    labels: np.ndarray,
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    num_classes: int,
    preprocessing: Preprocessing,
    class_names: tuple[str, ...] | None = None,
    source: dict | None = None,
    store=None,
) -> Source:
    """The source of ``images``/``labels``; its search halves are a stratified 50/50
    split of ``train_indices`` drawn with the run's seed.

    Args:
        name: the dataset's label (``DatasetInfo.name``).
        images: uint8 ``(N, H, W, C)`` images, or None with ``store``.
        labels: the N integer labels.
        train_indices: the training split's indices into ``images``.
        test_indices: the test split's indices.
        num_classes: the number of labels.
        preprocessing: the dataset's ``Preprocessing`` (its ``shape`` is the images').
        class_names: the labels' names [default: ``"0"``, ``"1"``, ...].
        source: ``DatasetInfo.source`` [default: a built-in dataset's].
        store: where examples are fetched from, instead of ``images`` in memory.

    Returns:
        The ``Source``.
    """
    store = store or ArrayStore(images, labels)
    train_indices = np.asarray(train_indices, np.int64)

    info = DatasetInfo(
        name=name,
        input_shape=tuple(int(d) for d in preprocessing.shape),
        num_classes=num_classes,
        num_train=len(train_indices),
        num_val=len(train_indices) // 2,
        num_test=len(test_indices),
        mean=tuple(float(m) for m in preprocessing.mean),
        std=tuple(float(s) for s in preprocessing.std),
        class_names=tuple(class_names or (str(label) for label in range(num_classes))),
        source=source or {"kind": "builtin", "name": name},
    )
    return Source(
        info=info,
        preprocessing=preprocessing,
        train=ArraySplit(store, train_indices),
        test=ArraySplit(store, test_indices),
        search_halves=functools.partial(stratified_halves, store, train_indices),
    )


def stratified_halves(store, indices: np.ndarray, seed: int) -> tuple[ArraySplit, ArraySplit]:
    """The search halves of the examples ``indices`` of ``store``: a class-stratified
    50/50 split drawn with the run's ``seed``."""
    rng = np.random.default_rng([seed, SALT_SEARCH_SPLIT])
    first, second = stratified_parts(store.labels[indices], 2, rng)
    return ArraySplit(store, indices[first]), ArraySplit(store, indices[second])


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``images`` (last axis: channels)."""
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return tuple(flat.mean(axis=0).tolist()), tuple(flat.std(axis=0).tolist())
