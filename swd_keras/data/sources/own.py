"""What users' datasets share (image folders, ``.npz`` files, NumPy arrays, tfds by name):
the settings' checks, the held-out split, resizing, statistics and preprocessing."""

from __future__ import annotations

import hashlib

import numpy as np
import tensorflow as tf

from swd_keras.data.augment import PadCropFlip
from swd_keras.data.info import DatasetError
from swd_keras.data.sources import Source
from swd_keras.data.sources.arrays import array_source

DEFAULT_HOLDOUT = 0.1
"""The fraction of a dataset without a test split that is held out as its test split."""

# The held-out part is the same for every run seed, so that a search and a retraining of
# other seeds never train on each other's test images.
_HOLDOUT_SEED = 0
_RESIZE_BATCH = 256
_STATS_CHUNK = 4096


def check_image_size(image_size) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)`` of positive integers, or None.

    Raises:
        DatasetError: anything else.
    """
    if image_size is None:
        return None
    try:
        height, width = (int(side) for side in image_size)
        ok = all(int(side) == side and not isinstance(side, bool) for side in image_size)
    except (TypeError, ValueError):
        ok = False
    if not ok or height < 1 or width < 1:
        raise DatasetError("image_size", f"image_size must be two positive integers "
                                         f"(height, width), got {image_size!r}")
    return height, width


def check_holdout(holdout) -> float | None:
    """``holdout`` as a float in (0, 1), or None (the default, ``DEFAULT_HOLDOUT``).

    Raises:
        DatasetError: anything else.
    """
    if holdout is None:
        return None
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) \
            or not 0.0 < holdout < 1.0:
        raise DatasetError("holdout", f"holdout must be a fraction in (0, 1), got {holdout!r}")
    return float(holdout)


def held_out(labels: np.ndarray, holdout: float | None, where: str,
             argument: str = "holdout") -> tuple[np.ndarray, np.ndarray]:
    """The kept and held-out indices of ``labels``: a stratified fraction.

    Each class of ``count >= 2`` examples gives ``round(holdout * count)`` of them, at
    least one and never all, drawn with a fixed seed (so every class is tested).

    Args:
        labels: the examples' labels.
        holdout: the fraction held out (None: ``DEFAULT_HOLDOUT``).
        where: the dataset, for the error message.
        argument: the setting ``holdout`` came from, for the error message.

    Returns:
        ``(kept_indices, held_out_indices)``, each sorted.

    Raises:
        DatasetError: the fraction holds out no example, or every example of a class.
    """
    fraction = DEFAULT_HOLDOUT if holdout is None else holdout
    rng = np.random.default_rng(_HOLDOUT_SEED)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        count = len(members)
        taken = min(count - 1, max(1, int(round(fraction * count))))
        test.append(rng.permutation(members)[:taken])
    test = np.sort(np.concatenate(test)).astype(np.int64)
    train = np.setdiff1d(np.arange(len(labels)), test).astype(np.int64)
    if len(test) == 0 or len(train) == 0:
        part = "test" if argument == "holdout" else argument
        raise DatasetError(argument, f"{argument}={fraction} of the {len(labels)} examples of "
                                     f"{where} leaves no {part if not len(test) else 'training'}"
                                     f" example: change the {argument} fraction"
                                     + (" or give a test split" if argument == "holdout" else ""))
    return train, test


def resize(image: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """A uint8 image (or batch) resized to ``size`` (bilinear, antialiased), as uint8.

    The same function serves images decoded one by one from disk and arrays resized in
    memory, so both give the same pixels.
    """
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def resize_all(images: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    """uint8 ``(N, H, W, C)`` images at ``size`` (unchanged if None or already there)."""
    if size is None or tuple(images.shape[1:3]) == tuple(size):
        return images
    with tf.device("/CPU:0"):
        return np.concatenate([resize(images[start:start + _RESIZE_BATCH], size).numpy()
                               for start in range(0, len(images), _RESIZE_BATCH)])


def statistics(images: np.ndarray, indices: np.ndarray) -> tuple[tuple[float, ...],
                                                                 tuple[float, ...]]:
    """Per-channel mean and standard deviation, in 0..1 units, of uint8 ``images[indices]``.

    Summed exactly in integers, a chunk at a time: a large set is never copied whole
    into floating point.
    """
    total = np.zeros(images.shape[-1], np.int64)
    squares = np.zeros(images.shape[-1], np.int64)
    for start in range(0, len(indices), _STATS_CHUNK):
        chunk = images[indices[start:start + _STATS_CHUNK]].reshape(-1, images.shape[-1])
        chunk = chunk.astype(np.int64)
        total += chunk.sum(axis=0)
        squares += (chunk * chunk).sum(axis=0)
    count = len(indices) * int(np.prod(images.shape[1:-1]))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return tuple((mean / 255).tolist()), tuple((std / 255).tolist())


def preprocessing(mean, std, shape) -> PadCropFlip:
    """Users' images: DARTS' pad-crop-flip with a pad of an eighth of the side (CIFAR's
    4 of 32), mirrored (natural images; digits, which mirroring changes, are built in)."""
    pad = max(1, min(shape[:2]) // 8)
    return PadCropFlip(mean, std, shape, max_value=255, pad=pad, flip=True)


def sha256(*parts: bytes | str) -> str:
    """The hex SHA-256 of ``parts`` (each length-prefixed, so boundaries count)."""
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def in_memory_source(label: str, images: np.ndarray, labels: np.ndarray,
                     test_images: np.ndarray | None, test_labels: np.ndarray | None,
                     class_names: tuple[str, ...], holdout: float | None,
                     source: dict) -> Source:
    """The source of users' uint8 images in memory, with their test split or a held-out
    one; the statistics come from the training split.

    Args:
        label: the dataset's short label (``DatasetInfo.name``).
        images: uint8 ``(N, H, W, C)`` training images (or all, without a test split).
        labels: their labels ``0 .. len(class_names) - 1``.
        test_images: the test split's images, or None to hold out ``holdout`` of ``images``.
        test_labels: the test split's labels, or None.
        class_names: the labels' names.
        holdout: the fraction held out without a test split (None: ``DEFAULT_HOLDOUT``).
        source: ``DatasetInfo.source``.

    Returns:
        The ``Source``.
    """
    labels = np.asarray(labels, np.int64)
    if test_images is not None and holdout is not None:
        raise DatasetError("holdout", f"{label} has a test split: holdout applies only to "
                                      f"datasets without one")
    if test_images is None:
        train_indices, test_indices = held_out(labels, holdout, label)
        source = {**source, "holdout": DEFAULT_HOLDOUT if holdout is None else holdout}
    else:
        train_indices = np.arange(len(images))
        test_indices = np.arange(len(images), len(images) + len(test_images))
        images = np.concatenate([images, test_images])
        labels = np.concatenate([labels, np.asarray(test_labels, np.int64)])
    mean, std = statistics(images, train_indices)
    return array_source(label, images, labels, train_indices, test_indices, len(class_names),
                        preprocessing(mean, std, images.shape[1:]), class_names, source)
