"""Augmentation and preprocessing: DARTS' pad-crop-flip, ImageNet's crops, cutout.

Every random choice comes from a stateless seed, so an example's augmentation is a
function of ``(seed, epoch, example index)`` (see ``splits.epoch_batches``).
"""

from __future__ import annotations

import abc

import tensorflow as tf

IMAGENET_SIZE = 224
_IMAGENET_RESIZE = 256


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


class Preprocessing(abc.ABC):
    """Turns a stored example into a float32 normalised image, with or without augmentation.

    The statistics are kept as Python numbers (they become constants of the tf.data
    graph), so describing a dataset creates no TensorFlow tensor.
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        self.mean = tuple(mean)
        self.std = tuple(std)

    def normalise(self, image: tf.Tensor) -> tf.Tensor:
        return (image - tf.constant(self.mean, tf.float32)) / tf.constant(self.std, tf.float32)

    @abc.abstractmethod
    def train(self, raw: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
        """The augmented image; ``key`` (a stateless seed) fixes every random choice."""

    @abc.abstractmethod
    def evaluate(self, raw: tf.Tensor) -> tf.Tensor:
        """The image as evaluation sees it (no randomness)."""


class PadCropFlip(Preprocessing):
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


class ImageNetCrops(Preprocessing):
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
        image = tf.image.resize(image, (IMAGENET_SIZE, IMAGENET_SIZE)) / 255.0
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
        return self.normalise(image)

    def evaluate(self, raw: tf.Tensor) -> tf.Tensor:
        image = tf.io.decode_jpeg(raw, channels=3)
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        resized = tf.cast(tf.round(hw * _IMAGENET_RESIZE / tf.reduce_min(hw)), tf.int32)
        image = tf.image.resize(image, resized) / 255.0
        top, left = (resized[0] - IMAGENET_SIZE) // 2, (resized[1] - IMAGENET_SIZE) // 2
        image = image[top : top + IMAGENET_SIZE, left : left + IMAGENET_SIZE]
        image = tf.ensure_shape(image, (IMAGENET_SIZE, IMAGENET_SIZE, 3))
        return self.normalise(image)
