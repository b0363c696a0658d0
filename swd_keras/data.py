"""Datasets for the search and the retraining, fed through tf.data to every Keras backend.

Five datasets (``DATASETS``): ``cifar10``, ``cifar100`` and ``imagenet2012`` through
TensorFlow Datasets (tfds), ``digits`` (scikit-learn's bundled 8x8 digits, no download)
and ``synthetic`` (a small generated set for smoke runs).

Every pipeline is a pure function of ``(seed, epoch)``: the whole dataset is
``tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)``, each epoch's order
comes from a stateless shuffle keyed by ``(seed, epoch)``, and each example's
augmentation from stateless random ops keyed by ``(seed, epoch, example index)``. A run
resumed at epoch ``e`` therefore sees exactly the batches an unbroken run sees at ``e``.

The datasets that fit in memory (CIFAR, digits, synthetic) are held as uint8 arrays and
shuffled exactly; ImageNet is streamed as encoded JPEGs and shuffled within windows of
``_STREAM_WINDOW`` examples (the same mixing as a shuffle buffer, but stateless).

Example:
    >>> data = search_data("digits", batch_size=32, epochs=3)
    >>> model.fit(data.dataset, epochs=3, steps_per_epoch=data.steps_per_epoch)
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import logging
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "digits", "synthetic", "imagenet2012")
"""The dataset names that ``search_data``, ``train_data`` and ``get_dataset_info`` accept."""

DEFAULT_CUTOUT: dict[str, int] = {
    "cifar10": 16,
    "cifar100": 16,
    "digits": 4,
    "synthetic": 8,
    "imagenet2012": 0,
}
"""``train_data``'s cutout side per dataset: half the image side (DARTS' 16 on 32x32
CIFAR); none on ImageNet, where DARTS' retraining uses none."""

_TFDS_DATASETS = frozenset({"cifar10", "cifar100", "imagenet2012"})

# Per-channel statistics in 0..1 units (DARTS' CIFAR values; torchvision's ImageNet ones).
_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Split sizes for get_dataset_info when tfds has no prepared metadata to read them from.
_PUBLISHED_SIZES = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "imagenet2012": (1_281_167, 50_000),
}
_IMAGENET_SIZE = 224
_IMAGENET_RESIZE = 256

# Digits: the held-out test part is fixed (the same for every --seed), a fifth of the set.
_DIGITS_TEST_SEED = 0
_DIGITS_TEST_PARTS = 5
_SYNTHETIC_SEED = 20_240_601
_SYNTHETIC_SHAPE = (16, 16, 3)
_SYNTHETIC_CLASSES = 10
_SYNTHETIC_TRAIN, _SYNTHETIC_TEST = 512, 128

_STREAM_WINDOW = 2048
_LOAD_BATCH = 4096
_NETWORK_TIMEOUT_S = 3.0

# Salts that give every random stream of a run its own key.
_SALT_SEARCH_TRAIN_ORDER = 1
_SALT_SEARCH_TRAIN_AUGMENT = 2
_SALT_SEARCH_VAL_ORDER = 3
_SALT_SEARCH_VAL_AUGMENT = 4
_SALT_TRAIN_ORDER = 5
_SALT_TRAIN_AUGMENT = 6
_SALT_SEARCH_SPLIT = 7


class DatasetUnavailableError(ValueError):
    """A tfds dataset is not prepared and can be neither downloaded nor built here."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset.

    Attributes:
        name: one of ``DATASETS``.
        input_shape: ``(height, width, channels)`` of the images the pipelines yield.
        num_classes: number of labels.
        num_train: examples in the training split (``train_data`` uses all of them;
            ``search_data`` halves them).
        num_val: examples in the search-validation half (``num_train // 2``).
        num_test: examples in the test split.
        mean: per-channel mean in 0..1 units, subtracted before dividing by ``std``.
        std: per-channel standard deviation in 0..1 units.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_val: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class SearchData:
    """The bilevel search input: search-train and search-validation batches, paired.

    Attributes:
        dataset: yields ``((x_train, y_train), (x_val, y_val))``, float32 NHWC images
            normalised per channel and int32 labels; ``steps_per_epoch`` batches of each
            half per epoch, for the epochs ``initial_epoch .. epochs - 1``.
        steps_per_epoch: full batches per epoch (the smaller half, remainder dropped).
        info: the dataset's ``DatasetInfo``.
        val_dataset: the search-validation half alone, ``(x, y)`` batches, unaugmented,
            in a fixed order and with the remainder kept (for ``evaluate``).
        num_train_examples: examples in the search-train half (after ``limit``).
        num_val_examples: examples in the search-validation half (after ``limit``).
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int
    info: DatasetInfo
    val_dataset: tf.data.Dataset
    num_train_examples: int
    num_val_examples: int


@dataclasses.dataclass(frozen=True)
class TrainData:
    """The retraining input: the whole training split, augmented, plus the test split.

    Attributes:
        dataset: yields ``(x, y)`` batches (augmentation and cutout applied),
            ``steps_per_epoch`` per epoch, for the epochs ``initial_epoch .. epochs - 1``.
        steps_per_epoch: full batches per epoch (remainder dropped).
        info: the dataset's ``DatasetInfo``.
        num_examples: training examples used (after ``limit``).
        num_test_examples: test examples (after ``limit``).
        batch_size: the training batch size, the default for ``test_dataset``.
        cutout: the cutout side applied (0: none).
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int
    info: DatasetInfo
    num_examples: int
    num_test_examples: int
    batch_size: int
    cutout: int
    _test: _Split = dataclasses.field(repr=False)
    _preprocessing: _Preprocessing = dataclasses.field(repr=False)

    def test_dataset(self, batch_size: int | None = None) -> tf.data.Dataset:
        """The test split as ``(x, y)`` batches: unaugmented, never shuffled, remainder kept.

        Args:
            batch_size: batch size; defaults to the training batch size.

        Returns:
            A ``tf.data.Dataset`` of float32 NHWC images and int32 labels.
        """
        size = self.batch_size if batch_size is None else _check_positive(batch_size, "batch_size")
        return _evaluation_batches(self._test, self._preprocessing, size)


# --------------------------------------------------------------------------- public API


def get_dataset_info(name: str, data_dir: str | None = None) -> DatasetInfo:
    """Describes a dataset without loading its examples (tfds: metadata only).

    For a tfds dataset that is not prepared yet, the split sizes are the published ones.

    Args:
        name: one of ``DATASETS``.
        data_dir: tfds data folder (default: tfds' own, ``~/tensorflow_datasets``).

    Returns:
        The ``DatasetInfo``.

    Example:
        >>> get_dataset_info("cifar10").input_shape
        (32, 32, 3)
    """
    _check_name(name)
    _keep_tensorflow_off_gpus()
    if name not in _TFDS_DATASETS:
        return _in_memory_dataset(name).info
    import tensorflow_datasets as tfds

    with _tfds_warnings_off():
        builder = tfds.builder(name, data_dir=_expand(data_dir))
    splits = builder.info.splits
    if "train" in splits and "test" in splits:
        num_train, num_test = splits["train"].num_examples, splits["test"].num_examples
    elif "train" in splits and "validation" in splits:
        num_train, num_test = splits["train"].num_examples, splits["validation"].num_examples
    else:
        num_train, num_test = _PUBLISHED_SIZES[name]
    return _tfds_info(name, builder, num_train, num_test)


def search_data(
    name: str,
    batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    epochs: int = 1,
    initial_epoch: int = 0,
    augment: bool = True,
    limit: int | None = None,
) -> SearchData:
    """The search input: the training split halved into search-train and search-validation.

    The halves are a class-stratified 50/50 split of the training split drawn with
    ``seed`` (ImageNet, streamed: tfds' ``train[:50%]`` and ``train[50%:]``); the test
    split is not touched. Both halves get the training augmentation (as in DARTS' search).

    Args:
        name: one of ``DATASETS``.
        batch_size: examples per batch of each half.
        seed: non-negative integer; the split, the order of every epoch and the
            augmentation are functions of it (and of the epoch).
        data_dir: tfds data folder (prepared copies, or ``downloads/manual`` archives).
        epochs: the epoch to stop before (as ``model.fit``'s ``epochs``).
        initial_epoch: the first epoch (as ``model.fit``'s ``initial_epoch``).
        augment: apply the training augmentation; ``False`` only normalises.
        limit: at most this many examples per half (quick runs and tests).

    Returns:
        A ``SearchData``.

    Raises:
        ValueError: an unknown name or an invalid argument.
        DatasetUnavailableError: a tfds dataset that is neither prepared nor obtainable.

    Example:
        >>> data = search_data("cifar10", batch_size=64, epochs=30)
        >>> data.steps_per_epoch
        390
    """
    _check_common(name, batch_size, seed, epochs, initial_epoch, limit)
    source = _load(name, data_dir)
    train_half, val_half = (half.limited(limit) for half in source.search_halves(seed))
    steps = min(train_half.size, val_half.size) // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the search halves of {name} "
            f"({train_half.size} and {val_half.size} examples): lower batch_size"
            + (" or raise limit" if limit is not None else "")
        )
    prep = source.preprocessing
    keys = {
        salt: _stream_key(seed, salt)
        for salt in (
            _SALT_SEARCH_TRAIN_ORDER,
            _SALT_SEARCH_TRAIN_AUGMENT,
            _SALT_SEARCH_VAL_ORDER,
            _SALT_SEARCH_VAL_AUGMENT,
        )
    }

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        train = _epoch_batches(
            train_half,
            prep,
            epoch,
            keys[_SALT_SEARCH_TRAIN_ORDER],
            keys[_SALT_SEARCH_TRAIN_AUGMENT],
            batch_size,
            steps,
            augment,
        )
        val = _epoch_batches(
            val_half,
            prep,
            epoch,
            keys[_SALT_SEARCH_VAL_ORDER],
            keys[_SALT_SEARCH_VAL_AUGMENT],
            batch_size,
            steps,
            augment,
        )
        return tf.data.Dataset.zip((train, val))

    return SearchData(
        dataset=_over_epochs(initial_epoch, epochs, one_epoch),
        steps_per_epoch=steps,
        info=source.info,
        val_dataset=_evaluation_batches(val_half, prep, batch_size),
        num_train_examples=train_half.size,
        num_val_examples=val_half.size,
    )


def train_data(
    name: str,
    batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    epochs: int = 1,
    initial_epoch: int = 0,
    cutout: int | None = None,
    augment: bool = True,
    limit: int | None = None,
) -> TrainData:
    """The retraining input: the whole training split, augmented, with cutout.

    Args:
        name: one of ``DATASETS``.
        batch_size: examples per batch.
        seed: non-negative integer; the order of every epoch and the augmentation are
            functions of it (and of the epoch).
        data_dir: tfds data folder (prepared copies, or ``downloads/manual`` archives).
        epochs: the epoch to stop before (as ``model.fit``'s ``epochs``).
        initial_epoch: the first epoch (as ``model.fit``'s ``initial_epoch``).
        cutout: side of the square ``cutout`` zeroes in each training image, smaller
            than the image; 0 for none; ``None`` for the dataset's default
            (``DEFAULT_CUTOUT``: DARTS' 16 on CIFAR, none on ImageNet). Applied only
            with ``augment``.
        augment: apply the training augmentation and cutout; ``False`` only normalises.
        limit: at most this many training examples and this many test examples.

    Returns:
        A ``TrainData``.

    Raises:
        ValueError: an unknown name or an invalid argument.
        DatasetUnavailableError: a tfds dataset that is neither prepared nor obtainable.

    Example:
        >>> data = train_data("cifar10", batch_size=96, epochs=600)
        >>> model.fit(data.dataset, epochs=600, steps_per_epoch=data.steps_per_epoch)
        >>> model.evaluate(data.test_dataset())
    """
    _check_common(name, batch_size, seed, epochs, initial_epoch, limit)
    if cutout is None:
        cutout = DEFAULT_CUTOUT[name]
    if isinstance(cutout, bool) or not isinstance(cutout, int) or cutout < 0:
        raise ValueError(f"cutout must be a non-negative integer (0 for none), got {cutout!r}")
    source = _load(name, data_dir)
    side = min(source.info.input_shape[:2])
    if cutout >= side:
        raise ValueError(
            f"cutout={cutout} would blank whole {name} images ({side} pixels wide): use at "
            f"most {side - 1} (the default for {name} is {DEFAULT_CUTOUT[name]})"
        )
    train = source.train.limited(limit)
    test = source.test.limited(limit)
    steps = train.size // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the training split of {name} "
            f"({train.size} examples): lower batch_size"
            + (" or raise limit" if limit is not None else "")
        )
    order_key = _stream_key(seed, _SALT_TRAIN_ORDER)
    augment_key = _stream_key(seed, _SALT_TRAIN_AUGMENT)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        return _epoch_batches(
            train,
            source.preprocessing,
            epoch,
            order_key,
            augment_key,
            batch_size,
            steps,
            augment,
            cutout_length=cutout,
        )

    return TrainData(
        dataset=_over_epochs(initial_epoch, epochs, one_epoch),
        steps_per_epoch=steps,
        info=source.info,
        num_examples=train.size,
        num_test_examples=test.size,
        batch_size=batch_size,
        cutout=cutout if augment else 0,
        _test=test,
        _preprocessing=source.preprocessing,
    )


def cutout(images: tf.Tensor, length: int, seed: tf.Tensor | tuple[int, int]) -> tf.Tensor:
    """Zeroes one ``length`` x ``length`` square per image, as DARTS' Cutout does.

    The square's centre is uniform over the image's pixels; the square is clipped at
    the borders (so it covers fewer pixels near them). Rows ``cy - length // 2`` to
    ``cy - length // 2 + length - 1`` are masked (for even lengths exactly DARTS' rows).

    Args:
        images: a batch ``(N, H, W, C)``.
        length: side of the square in pixels; 0 returns the images unchanged.
        seed: a stateless seed, shape ``(2,)`` integers; the centres are a function of it.

    Returns:
        The images with the squares set to zero, same shape and dtype.

    Example:
        >>> cutout(tf.ones((2, 32, 32, 3)), 16, seed=(0, 1))
    """
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be a non-negative integer, got {length!r}")
    images = tf.convert_to_tensor(images)
    if images.shape.rank != 4:
        raise ValueError(f"images must be a batch (N, H, W, C), got shape {images.shape}")
    if length == 0:
        return images
    shape = tf.shape(images)
    count, height, width = shape[0], shape[1], shape[2]
    row_key, col_key = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    rows = tf.random.stateless_uniform([count], row_key, 0, height, dtype=tf.int32)
    cols = tf.random.stateless_uniform([count], col_key, 0, width, dtype=tf.int32)

    def covered(centres: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        first = centres[:, None] - length // 2
        positions = tf.range(size)[None, :]
        return (positions >= first) & (positions < first + length)

    mask = covered(rows, height)[:, :, None] & covered(cols, width)[:, None, :]
    return tf.where(mask[..., None], tf.zeros_like(images), images)


# ----------------------------------------------------------------------- preprocessing


class _Preprocessing(abc.ABC):
    """Turns a stored example into a float32 normalised image, with or without augmentation."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = tf.constant(mean, tf.float32)
        self.std = tf.constant(std, tf.float32)

    def normalise(self, image: tf.Tensor) -> tf.Tensor:
        return (image - self.mean) / self.std

    @abc.abstractmethod
    def train(self, raw: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """The augmented image; ``key`` (a stateless seed) fixes every random choice."""

    @abc.abstractmethod
    def evaluate(self, raw: tf.Tensor) -> tf.Tensor:
        """The image as evaluation sees it (no randomness)."""


class _PadCropFlip(_Preprocessing):
    """DARTS' small-image augmentation: zero pad, random crop back, optional h-flip."""

    def __init__(self, mean, std, shape, max_value: float, pad: int, flip: bool):
        super().__init__(mean, std)
        self.shape = tuple(shape)
        self.max_value = float(max_value)
        self.pad = pad
        self.flip = flip

    def _scaled(self, raw: tf.Tensor) -> tf.Tensor:
        return tf.cast(raw, tf.float32) / self.max_value

    def train(self, raw: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = self._scaled(raw)
        pad = self.pad
        image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
        image = tf.image.stateless_random_crop(image, self.shape, seed=crop_key)
        if self.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
        return self.normalise(image)

    def evaluate(self, raw: tf.Tensor) -> tf.Tensor:
        return self.normalise(self._scaled(raw))


class _ImageNetCrops(_Preprocessing):
    """ImageNet: random-resized crop 224 + h-flip for training; resize 256, centre 224.

    DARTS' ImageNet script also jitters colours in training; this keeps to the crops.
    """

    def train(self, raw: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        box_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
        image = tf.io.decode_jpeg(raw, channels=3)
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=box_key,
            min_object_covered=0.0,
            aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
        image = tf.image.resize(image, (_IMAGENET_SIZE, _IMAGENET_SIZE)) / 255.0
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
        return self.normalise(image)

    def evaluate(self, raw: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(raw, channels=3)
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        resized = tf.cast(tf.round(hw * _IMAGENET_RESIZE / tf.reduce_min(hw)), tf.int32)
        image = tf.image.resize(image, resized) / 255.0
        top, left = (resized[0] - _IMAGENET_SIZE) // 2, (resized[1] - _IMAGENET_SIZE) // 2
        image = image[top : top + _IMAGENET_SIZE, left : left + _IMAGENET_SIZE]
        image = tf.ensure_shape(image, (_IMAGENET_SIZE, _IMAGENET_SIZE, 3))
        return self.normalise(image)


# ------------------------------------------------------------------------------ splits


class _Split(abc.ABC):
    """A part of a dataset whose examples come out as ``(raw, label int32, index int64)``.

    ``index`` identifies the example within its dataset; it keys its augmentation.
    """

    size: int

    @abc.abstractmethod
    def limited(self, limit: int | None) -> _Split:
        """The first ``limit`` examples (all for ``None``)."""

    @abc.abstractmethod
    def examples(self, order_key: tf.Tensor | None) -> tf.data.Dataset:
        """The examples, permuted by the stateless key ``order_key`` (``None``: stored order)."""


class _ArraySplit(_Split):
    """Examples held in memory, selected by ``indices``; shuffles are exact permutations."""

    def __init__(self, images: tf.Tensor, labels: tf.Tensor, indices: np.ndarray):
        self.images = images
        self.labels = labels
        self.indices = np.asarray(indices, np.int64)
        self.size = len(self.indices)

    def limited(self, limit: int | None) -> _ArraySplit:
        if limit is None:
            return self
        return _ArraySplit(self.images, self.labels, self.indices[:limit])

    def examples(self, order_key: tf.Tensor | None) -> tf.data.Dataset:
        indices = tf.constant(self.indices, tf.int64)
        if order_key is not None:
            indices = tf.random.experimental.stateless_shuffle(indices, seed=order_key)
        images, labels = self.images, self.labels
        return tf.data.Dataset.from_tensor_slices(indices).map(
            lambda i: (tf.gather(images, i), tf.gather(labels, i), i)
        )


class _StreamSplit(_Split):
    """Examples streamed from a tfds dataset of ``(raw, label)``; shuffled within windows."""

    def __init__(self, dataset: tf.data.Dataset, size: int):
        self.dataset = dataset
        self.size = size

    def limited(self, limit: int | None) -> _StreamSplit:
        if limit is None or limit >= self.size:
            return self
        return _StreamSplit(self.dataset.take(limit), limit)

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

        return examples.batch(_STREAM_WINDOW).enumerate().map(permute).unbatch()


@dataclasses.dataclass(frozen=True)
class _Source:
    """A loaded dataset: its info, preprocessing, splits, and how to halve it for search."""

    info: DatasetInfo
    preprocessing: _Preprocessing
    train: _Split
    test: _Split
    search_halves: Callable[[int], tuple[_Split, _Split]]


def _stratified_parts(labels: np.ndarray, num_parts: int, rng: np.random.Generator):
    """Splits the indices of ``labels`` into ``num_parts`` class-balanced random parts.

    Shuffles, groups by class (stable, so the order within a class stays random) and
    deals the grouped list round-robin: every class is spread over the parts with
    counts differing by at most one, and part ``p`` gets ``ceil((n - p) / num_parts)``.
    Each part is returned in a random order, so a prefix of it is a random subset.
    """
    shuffled = rng.permutation(len(labels))
    grouped = shuffled[np.argsort(labels[shuffled], kind="stable")]
    return [rng.permutation(grouped[part::num_parts]) for part in range(num_parts)]


def _array_source(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    train_indices: np.ndarray,
    test_indices: np.ndarray,
    num_classes: int,
    preprocessing: _PadCropFlip,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> _Source:
    """A ``_Source`` over arrays in memory (uint8 images, one array for all splits)."""
    with tf.device("/CPU:0"):
        images_t = tf.constant(images)
        labels_t = tf.constant(labels.astype(np.int32))
    train_indices = np.asarray(train_indices, np.int64)
    train_labels = labels[train_indices]

    def search_halves(seed: int) -> tuple[_Split, _Split]:
        rng = np.random.default_rng([seed, _SALT_SEARCH_SPLIT])
        first, second = _stratified_parts(train_labels, 2, rng)
        return (
            _ArraySplit(images_t, labels_t, train_indices[first]),
            _ArraySplit(images_t, labels_t, train_indices[second]),
        )

    info = DatasetInfo(
        name=name,
        input_shape=tuple(int(d) for d in images.shape[1:]),
        num_classes=num_classes,
        num_train=len(train_indices),
        num_val=len(train_indices) // 2,
        num_test=len(test_indices),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    return _Source(
        info=info,
        preprocessing=preprocessing,
        train=_ArraySplit(images_t, labels_t, train_indices),
        test=_ArraySplit(images_t, labels_t, test_indices),
        search_halves=search_halves,
    )


# ---------------------------------------------------------------------------- pipelines


def _stream_key(seed: int, salt: int) -> tf.Tensor:
    return tf.constant([seed, salt], tf.int64)


def _epoch_batches(
    split: _Split,
    preprocessing: _Preprocessing,
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


def _evaluation_batches(
    split: _Split, preprocessing: _Preprocessing, batch_size: int
) -> tf.data.Dataset:
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


def _over_epochs(
    initial_epoch: int, epochs: int, one_epoch: Callable[[tf.Tensor], tf.data.Dataset]
) -> tf.data.Dataset:
    return (
        tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)
    )


# ------------------------------------------------------------------------------ loaders


def _load(name: str, data_dir: str | None) -> _Source:
    _keep_tensorflow_off_gpus()
    if name in _TFDS_DATASETS:
        return _tfds_source(name, data_dir)
    return _in_memory_dataset(name)


@functools.cache
def _in_memory_dataset(name: str) -> _Source:
    """digits or synthetic: small, built in memory once per process."""
    if name == "digits":
        return _digits()
    return _synthetic()


def _digits() -> _Source:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]  # integer values 0..16
    labels = bunch.target.astype(np.int64)
    rng = np.random.default_rng(_DIGITS_TEST_SEED)
    parts = _stratified_parts(labels, _DIGITS_TEST_PARTS, rng)
    test_indices, train_indices = parts[0], np.concatenate(parts[1:])
    mean, std = _channel_statistics(images[train_indices] / 16.0)
    preprocessing = _PadCropFlip(mean, std, images.shape[1:], max_value=16, pad=1, flip=False)
    return _array_source(
        "digits", images, labels, train_indices, test_indices, 10, preprocessing, mean, std
    )


def _synthetic() -> _Source:
    """Smooth random class patterns plus pixel noise: learnable, deterministic, tiny."""
    rng = np.random.default_rng(_SYNTHETIC_SEED)
    height, width, channels = _SYNTHETIC_SHAPE
    coarse = rng.uniform(0.0, 1.0, (_SYNTHETIC_CLASSES, height // 4, width // 4, channels))
    patterns = coarse.repeat(4, axis=1).repeat(4, axis=2)
    total = _SYNTHETIC_TRAIN + _SYNTHETIC_TEST
    labels = rng.permutation(np.arange(total) % _SYNTHETIC_CLASSES)
    noisy = 0.25 + 0.5 * patterns[labels] + rng.normal(0.0, 0.12, (total, *_SYNTHETIC_SHAPE))
    images = np.round(np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)
    train_indices = np.arange(_SYNTHETIC_TRAIN)
    test_indices = np.arange(_SYNTHETIC_TRAIN, total)
    mean, std = _channel_statistics(images[train_indices] / 255.0)
    preprocessing = _PadCropFlip(mean, std, _SYNTHETIC_SHAPE, max_value=255, pad=2, flip=False)
    return _array_source(
        "synthetic",
        images,
        labels,
        train_indices,
        test_indices,
        _SYNTHETIC_CLASSES,
        preprocessing,
        mean,
        std,
    )


def _channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    flat = images.reshape(-1, images.shape[-1]).astype(np.float64)
    return tuple(flat.mean(axis=0).tolist()), tuple(flat.std(axis=0).tolist())


def _tfds_info(name: str, builder, num_train: int, num_test: int) -> DatasetInfo:
    mean, std = _NORMALISATION[name]
    if name == "imagenet2012":
        input_shape = (_IMAGENET_SIZE, _IMAGENET_SIZE, 3)
    else:
        input_shape = tuple(int(d) for d in builder.info.features["image"].shape)
    return DatasetInfo(
        name=name,
        input_shape=input_shape,
        num_classes=int(builder.info.features["label"].num_classes),
        num_train=int(num_train),
        num_val=int(num_train) // 2,
        num_test=int(num_test),
        mean=mean,
        std=std,
    )


def _tfds_source(name: str, data_dir: str | None) -> _Source:
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name, data_dir)
    mean, std = _NORMALISATION[name]
    if name == "imagenet2012":
        return _imagenet_source(builder, mean, std)

    def load(split: str) -> tuple[np.ndarray, np.ndarray]:
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=False,
            as_supervised=True,
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        images, labels = [], []
        for image_batch, label_batch in dataset.batch(_LOAD_BATCH).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        return np.concatenate(images), np.concatenate(labels).astype(np.int64)

    train_images, train_labels = load("train")
    test_images, test_labels = load("test")
    images = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    num_train = len(train_images)
    preprocessing = _PadCropFlip(mean, std, train_images.shape[1:], max_value=255, pad=4, flip=True)
    return _array_source(
        name,
        images,
        labels,
        np.arange(num_train),
        np.arange(num_train, len(images)),
        int(builder.info.features["label"].num_classes),
        preprocessing,
        mean,
        std,
    )


def _imagenet_source(builder, mean, std) -> _Source:
    import tensorflow_datasets as tfds

    def stream(split: str) -> _StreamSplit:
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=False,
            as_supervised=True,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        size = int(dataset.cardinality())
        if size < 0:
            raise ValueError(f"imagenet2012 split {split!r} has no known size")
        return _StreamSplit(dataset, size)

    train, test = stream("train"), stream("validation")
    info = _tfds_info("imagenet2012", builder, train.size, test.size)
    return _Source(
        info=info,
        preprocessing=_ImageNetCrops(mean, std),
        train=train,
        test=test,
        # Streamed: a seeded split would need a pass over 1.28M images; tfds' slices
        # are fixed halves instead.
        search_halves=lambda seed: (stream("train[:50%]"), stream("train[50%:]")),
    )


# ------------------------------------------------------- tfds: prepared, or obtainable?


def _prepared_builder(name: str, data_dir: str | None):
    """The tfds builder of ``name``, prepared, or DatasetUnavailableError within seconds.

    Prepares the data when the archives lie in ``DATA_DIR/downloads/manual`` (tfds'
    manual folder) or, for datasets tfds may download, when the download host answers
    a one-byte request within ``_NETWORK_TIMEOUT_S``. A bare tfds download without network
    retries for minutes; this check answers at once instead.
    """
    import tensorflow_datasets as tfds

    with _tfds_warnings_off():
        builder = tfds.builder(name, data_dir=_expand(data_dir))
        prepared = builder.is_prepared()
    if prepared:
        return builder
    # With a data_dir, tfds' root is that folder: the manual folder lies under it.
    root = Path(_expand(data_dir)) if data_dir is not None else Path(builder.data_dir_root)
    manual_dir = root / "downloads" / "manual"
    archives = {
        url: url_info.filename or urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
        for url, url_info in (builder.url_infos or {}).items()
    }
    archives_present = bool(archives) and all((manual_dir / f).exists() for f in archives.values())
    manual_only = builder.MANUAL_DOWNLOAD_INSTRUCTIONS is not None
    if archives_present or (
        not manual_only and archives and all(_can_reach(url) for url in archives)
    ):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), try_download_gcs=False
            )
        )
        return builder
    files = ", ".join(archives.values())
    if manual_only:
        raise DatasetUnavailableError(
            f"{name} is not prepared in {root} and needs a manual download: put {files} "
            f"(from {builder.info.homepage}) in {manual_dir}, or pass --data-dir DIR where "
            f"`tfds build {name} --data_dir DIR` has prepared it"
        )
    raise DatasetUnavailableError(
        f"{name} is not prepared in {root} and cannot be downloaded (no network): run "
        f"`tfds build {name} --data_dir DIR` on a machine with network, copy DIR here and "
        f"pass --data-dir DIR (or put the original archive {files} in {manual_dir})"
    )


@contextlib.contextmanager
def _tfds_warnings_off():
    """Hides tfds' log warnings about a folder that is not prepared yet.

    That case is ours to report, in one line (``_prepared_builder``).
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def _can_reach(url: str, timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """Whether ``url`` answers a one-byte GET with a success status within ``timeout``.

    A TCP connect alone proves nothing behind an intercepting proxy, which accepts every
    connection; an HTTP status from the real host does. The request runs in a daemon
    thread, so a hanging name lookup cannot hold the caller longer than ``timeout``.
    Proxies from the environment are honoured (by urllib, as tfds' download does).
    """
    answered = []
    done = threading.Event()

    def ask() -> None:
        try:
            request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answered.append(response.status < 400)
        except Exception:  # any failure of the probe means: no usable network
            pass
        finally:
            done.set()

    threading.Thread(target=ask, daemon=True).start()
    done.wait(timeout)
    return bool(answered) and answered[0]


# ------------------------------------------------------------------------------ checks


def _keep_tensorflow_off_gpus() -> None:
    """On the JAX and PyTorch backends, tf.data runs on the CPU and leaves GPUs alone.

    TensorFlow would otherwise reserve most of each GPU's memory when it starts.
    """
    if keras.backend.backend() == "tensorflow":
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already started: its device set is fixed.
        pass


def _expand(data_dir: str | None) -> str | None:
    return None if data_dir is None else str(Path(data_dir).expanduser())


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {name!r}")


def _check_positive(value: int, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")
    return int(value)


def _check_common(
    name: str, batch_size: int, seed: int, epochs: int, initial_epoch: int, limit: int | None
) -> None:
    _check_name(name)
    _check_positive(batch_size, "batch_size")
    _check_positive(epochs, "epochs")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(initial_epoch, (int, np.integer)) or not 0 <= initial_epoch < epochs:
        raise ValueError(
            f"initial_epoch must be an integer in [0, epochs) = [0, {epochs}), "
            f"got {initial_epoch!r}"
        )
    if limit is not None:
        _check_positive(limit, "limit")
