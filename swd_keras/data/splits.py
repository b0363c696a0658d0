"""Splits and batch orders: the search halves, per-(seed, epoch) orders, stratified parts.

Every pipeline is a pure function of ``(seed, epoch)``: the whole dataset is
``tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)``, each epoch's order
comes from a stateless shuffle keyed by ``(seed, epoch)``, and each example's
augmentation from stateless random ops keyed by ``(seed, epoch, example index)``. A run
resumed at epoch ``e`` therefore sees exactly the batches an unbroken run sees at ``e``.

In-memory datasets are shuffled exactly; streamed ones (ImageNet) within windows of
``STREAM_WINDOW`` examples (the same mixing as a shuffle buffer, but stateless).
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from swd_keras.data.augment import Preprocessing, cutout

STREAM_WINDOW = 2048

# Salts that give every random stream of a run its own key.
SALT_SEARCH_TRAIN_ORDER = 1
SALT_SEARCH_TRAIN_AUGMENT = 2
SALT_SEARCH_VAL_ORDER = 3
SALT_SEARCH_VAL_AUGMENT = 4
SALT_TRAIN_ORDER = 5
SALT_TRAIN_AUGMENT = 6
SALT_SEARCH_SPLIT = 7


def stratified_parts(labels: np.ndarray, num_parts: int, rng: np.random.Generator):
    """Splits the indices of ``labels`` into ``num_parts`` class-balanced random parts.

    Shuffles, groups by class (stable, so the order within a class stays random) and
    deals the grouped list round-robin: every class is spread over the parts with
    counts differing by at most one, and part ``p`` gets ``ceil((n - p) / num_parts)``.
    Each part is returned in a random order, so a prefix of it is a random subset.
    """
    shuffled = rng.permutation(len(labels))
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    return [rng.permutation(grouped[part::num_parts]) for part in range(num_parts)]


class Split(abc.ABC):
    """A part of a dataset whose examples come out as ``(raw, label int32, index int64)``.

    ``index`` identifies the example within its dataset; it keys its augmentation.
    """

    size: int

    @abc.abstractmethod
    def limited(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all for ``None``)."""

    @abc.abstractmethod
    def examples(self, order_key: tf.Tensor | None) -> tf.data.Dataset:
        """The examples, permuted by the stateless key ``order_key`` (``None``: stored order)."""


class ArrayStore:
    """A dataset's uint8 images and labels, in NumPy.

    They are copied into TensorFlow (on the CPU, outside any traced function) the first
    time a pipeline reads them, so that describing a dataset starts no TensorFlow device.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = images
        self.labels = labels.astype(np.int32)

    @functools.cached_property
    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.init_scope(), tf.device("/CPU:0"):
            return tf.constant(self.images), tf.constant(self.labels)

    def fetch(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """The stored image and label of example ``index``."""
        images, labels = self.tensors
        return tf.gather(images, index), tf.gather(labels, index)


class ArraySplit(Split):
    """Examples of a store selected by ``indices``; shuffles are exact permutations.

    The store holds the examples in memory (``ArrayStore``) or reads each from disk
    (``sources.folder.FileStore``): anything with ``fetch(index) -> (raw, label)``.
    """

    def __init__(self, store: ArrayStore, indices: np.ndarray):
        self.store = store
        self.indices = np.asarray(indices, np.int64)
        self.size = len(self.indices)

    def limited(self, limit: int | None) -> ArraySplit:
        if limit is None:
            return self
        return ArraySplit(self.store, self.indices[:limit])

    def examples(self, order_key: tf.Tensor | None) -> tf.data.Dataset:
        indices = tf.constant(self.indices, tf.int64)
        if order_key is not None:
            indices = tf.random.experimental.stateless_shuffle(indices, seed=order_key)
        return tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: (*self.store.fetch(i), i),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )


class StreamSplit(Split):
    """Examples streamed from a tfds dataset of ``(raw, label)``; shuffled within windows."""

    def __init__(self, dataset: tf.data.Dataset, size: int):
        self.dataset = dataset
        self.size = size

    def limited(self, limit: int | None) -> StreamSplit:
        if limit is None or limit >= self.size:
            return self
        return StreamSplit(self.dataset.take(limit), limit)

    def examples(self, order_key: tf.Tensor | None) -> tf.data.Dataset:
        examples = self.dataset.enumerate().map(
            lambda i, example: (example[0], tf.cast(example[1], tf.int32), i)
        )
        if order_key is None:
            return examples

        def permute(window_index: tf.Tensor, window: tuple) -> tuple:
            key = tf.random.experimental.stateless_fold_in(order_key, window_index)
            order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(window[2])[0]), key)
            return tuple(tf.gather(part, order) for part in window)

        return examples.batch(STREAM_WINDOW).enumerate().map(permute).unbatch()


def stream_key(seed: int, salt: int) -> tf.Tensor:
    """The stateless key of one random stream of a run."""
    return tf.constant([seed, salt], tf.int64)


def epoch_batches(
    split: Split,
    preprocessing: Preprocessing,
    epoch: tf.Tensor,
    order_key: tf.Tensor,
    augment_key: tf.Tensor,
    batch_size: int,
    steps: int,
    augment: bool,
    cutout_length: int = 0,
) -> tf.data.Dataset:
    """One epoch of ``steps`` full batches, a function of (keys, epoch) only."""
    epoch_order = tf.random.experimental.stateless_fold_in(order_key, epoch)
    epoch_augment = tf.random.experimental.stateless_fold_in(augment_key, epoch)

    def transform(raw: tf.Tensor, label: tf.Tensor, index: tf.Tensor):
        if not augment:
            return preprocessing.evaluate(raw), label
        key = tf.random.experimental.stateless_fold_in(epoch_augment, index)
        image_key, cutout_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = preprocessing.train(raw, image_key)
        if cutout_length:
            image = cutout(image[None], cutout_length, cutout_key)[0]
        return image, label

    return (
        split.examples(epoch_order)
        .take(steps * batch_size)
        .map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .batch(batch_size, drop_remainder=True)
    )


def evaluation_batches(
    split: Split, preprocessing: Preprocessing, batch_size: int
) -> tf.data.Dataset:
    """The split unaugmented, in its stored order, remainder kept."""
    return (
        split.examples(None)
        .map(
            lambda raw, label, index: (preprocessing.evaluate(raw), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


def over_epochs(
    initial_epoch: int, epochs: int, one_epoch: Callable[[tf.Tensor], tf.data.Dataset]
) -> tf.data.Dataset:
    """The epochs ``initial_epoch .. epochs - 1``, each built by ``one_epoch(epoch)``."""
    return (
        tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)
    )
