"""An image folder: one subfolder per class, ``keras.utils.image_dataset_from_directory``'s
conventions (class names are the sorted subfolder names; files ending in .bmp, .gif,
.jpeg, .jpg or .png, found recursively; hidden entries skipped).

The test split is the subfolder ``test/`` (with the same class subfolders), or another
folder given as ``test_dir``, else a stratified fraction (``holdout``) held out with a
fixed seed and listed in the run's record (``holdout_files``). A class cannot be named
``test``.

Every file's header is read once (Pillow): an unreadable file is named at once, the image
size is found (or ``image_size`` required when the sizes differ) and the channels chosen
(1 when every image is grey, else 3). A folder whose decoded images fit in
``IN_MEMORY_BYTES`` is decoded once into memory; a larger one is read and decoded from
disk by index in every epoch (``FileStore``), and its normalisation statistics come from
a seeded sample of ``STATS_SAMPLE`` training images.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from swd_keras.data.info import DatasetError
from swd_keras.data.sources import Source
from swd_keras.data.sources.arrays import array_source
from swd_keras.data.sources.own import (
    DEFAULT_HOLDOUT,
    held_out,
    preprocessing,
    resize,
    sha256,
    statistics,
)

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
TEST_FOLDER = "test"
IN_MEMORY_BYTES = 512 * 2**20
"""Folders whose decoded images take at most this many bytes are held in memory."""
STATS_SAMPLE = 2048
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_DECODE_BATCH = 64


class FileStore:
    """Images read from their files and decoded by index (``ArraySplit``'s store)."""

    def __init__(self, files: list[str], labels: np.ndarray, shape: tuple[int, int, int]):
        self.files = np.asarray(files)
        self.labels = labels.astype(np.int32)
        self.shape = shape

    @functools.cached_property
    def tensors(self) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.init_scope(), tf.device("/CPU:0"):
            return tf.constant(self.files), tf.constant(self.labels)

    def decode(self, path: tf.Tensor) -> tf.Tensor:
        """The uint8 image of the file at ``path``, at the store's shape."""
        height, width, channels = self.shape
        # As RGB: TensorFlow decodes BMP and GIF files into 3 or 4 channels only; a grey
        # image's three channels are equal, so its first one is the image.
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.ensure_shape(image, (None, None, 3))[..., :channels]
        same = tf.reduce_all(tf.shape(image)[:2] == (height, width))
        image = tf.cond(same, lambda: image, lambda: resize(image, (height, width)))
        return tf.ensure_shape(image, self.shape)

    def fetch(self, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        files, labels = self.tensors
        return self.decode(tf.gather(files, index)), tf.gather(labels, index)

    def decode_all(self, indices: np.ndarray) -> np.ndarray:
        """The images of ``indices`` in memory; a file that does not decode is named."""
        images = []
        with tf.device("/CPU:0"):
            for start in range(0, len(indices), _DECODE_BATCH):
                chunk = self.files[indices[start:start + _DECODE_BATCH]]
                try:
                    images.append(tf.map_fn(self.decode, tf.constant(chunk),
                                            fn_output_signature=tf.uint8).numpy())
                except tf.errors.OpError:
                    for path in chunk:
                        try:
                            self.decode(tf.constant(path))
                        except tf.errors.OpError as error:
                            reason = error.message.splitlines()[0]
                            raise DatasetError("dataset", f"{path}: cannot decode the image "
                                                          f"({reason})") from None
                    raise
        return np.concatenate(images)


def _class_files(root: Path, where: str) -> dict[str, list[str]]:
    """Class name -> its image files (sorted), for the class subfolders of ``root``."""
    classes = sorted(entry.name for entry in root.iterdir()
                     if entry.is_dir() and not entry.name.startswith(".")
                     and entry.name != TEST_FOLDER)
    found = {}
    for name in classes:
        files = []
        for folder, subfolders, names in os.walk(root / name, followlinks=True):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            files += [os.path.join(folder, f) for f in sorted(names)
                      if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith(".")]
        if not files:
            raise DatasetError(where, f"class folder {root / name} holds no images "
                                      f"({', '.join(IMAGE_SUFFIXES)})")
        found[name] = files
    return found


def _headers(files: list[str]) -> tuple[set[tuple[int, int]], bool]:
    """The image sizes ``(height, width)`` found and whether every image is grey."""
    from PIL import Image, UnidentifiedImageError

    sizes, grey = set(), True
    for path in files:
        try:
            with Image.open(path) as image:
                sizes.add((image.height, image.width))
                grey = grey and _is_grey(image)
        except (OSError, UnidentifiedImageError, ValueError) as error:
            raise DatasetError("dataset", f"{path}: cannot read the image ({error})") from None
    return sizes, grey


def _is_grey(image) -> bool:
    """Whether a Pillow image is grey: a grey mode, or a palette of greys (GIF)."""
    if image.mode == "P":
        palette = image.getpalette() or [0, 1, 2]
        return palette[0::3] == palette[1::3] == palette[2::3]
    return image.mode in _GREY_MODES


def load(path: str, image_size: tuple[int, int] | None, test_dir: str | None,
         holdout: float | None) -> Source:
    """The source of the image folder ``path`` (see the module's note).

    Args:
        path: the folder, one subfolder per class.
        image_size: ``(height, width)`` to resize every image to; None: the images'
            own, which must then be the same for all.
        test_dir: the test split's folder [default: ``path/test`` if it exists].
        holdout: the fraction held out without a test folder (None: ``DEFAULT_HOLDOUT``).

    Returns:
        The ``Source``.

    Raises:
        DatasetError: fewer than two classes, a class without images, an unreadable
            image, images of several sizes without ``image_size``, a test folder with a
            class the training folder lacks.
    """
    root = Path(path)
    classes = _class_files(root, "dataset")
    if len(classes) < 2:
        raise DatasetError("dataset", f"{root} holds {len(classes)} class folder(s): an image "
                                      f"folder holds one subfolder per class, at least two")
    class_names = tuple(classes)
    files = [f for name in class_names for f in classes[name]]
    labels = np.concatenate([np.full(len(classes[name]), label)
                             for label, name in enumerate(class_names)]).astype(np.int64)
    sizes, grey = _headers(files)
    test_root = Path(test_dir) if test_dir is not None else root / TEST_FOLDER
    record = {"kind": "folder", "path": str(root)}
    if test_dir is not None or test_root.is_dir():
        if holdout is not None:
            raise DatasetError("holdout", f"{root} has a test folder ({test_root}): holdout "
                                          f"applies only to folders without one")
        tests = _class_files(test_root, "test_dir" if test_dir is not None else "dataset")
        unknown = sorted(set(tests) - set(class_names))
        if unknown or not tests:
            raise DatasetError("test_dir", f"test folder {test_root} must hold class folders "
                                           f"of {root}; " + (f"{root} has no {unknown}"
                                                             if unknown else "it has none"))
        train_count = len(files)
        files += [f for name in tests for f in tests[name]]
        labels = np.concatenate([labels] + [np.full(len(tests[name]), class_names.index(name))
                                            for name in tests]).astype(np.int64)
        test_sizes, test_grey = _headers(files[train_count:])
        sizes, grey = sizes | test_sizes, grey and test_grey
        train_indices = np.arange(train_count)
        test_indices = np.arange(train_count, len(files))
        record["test_dir"] = str(test_root)
    else:
        train_indices, test_indices = held_out(labels, holdout, str(root))
        record["holdout"] = DEFAULT_HOLDOUT if holdout is None else holdout
        record["holdout_files"] = [os.path.relpath(files[i], root) for i in test_indices]
    if image_size is None and len(sizes) > 1:
        examples = ", ".join(f"{h}x{w}" for h, w in sorted(sizes)[:3])
        raise DatasetError("image_size", f"the images in {root} have {len(sizes)} sizes "
                                         f"({examples}, ...): pass --image-size H W "
                                         f"(image_size=(H, W)) to resize them to one")
    shape = (*(image_size or next(iter(sizes))), 1 if grey else 3)
    record["sha256"] = sha256(*(f"{os.path.relpath(f, root)}\t{label}\t{os.path.getsize(f)}"
                                for f, label in zip(files, labels, strict=True)), str(shape))
    store = FileStore(files, labels, shape)
    images = None
    if len(files) * int(np.prod(shape)) <= IN_MEMORY_BYTES:
        images = store.decode_all(np.arange(len(files)))
        mean, std = statistics(images, train_indices)
        store = None
    else:
        rng = np.random.default_rng(0)
        sample = np.sort(rng.permutation(train_indices)[:STATS_SAMPLE])
        mean, std = statistics(store.decode_all(sample), np.arange(len(sample)))
    return array_source(root.name, images, labels, train_indices, test_indices,
                        len(class_names), preprocessing(mean, std, shape), class_names,
                        record, store=store)
