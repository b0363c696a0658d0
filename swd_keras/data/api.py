"""The public data API: ``search_data``, ``train_data``, ``get_dataset_info``.

Both pipelines are pure functions of ``(seed, epoch)`` (``splits``), so a resumed run
sees exactly the batches of an unbroken one.

**TensorFlow and GPUs.** tf.data feeds every Keras backend. On JAX and PyTorch,
TensorFlow would reserve most of each GPU's memory when it first starts, so
``search_data`` and ``train_data`` (where a pipeline is set up) hide the GPUs from
TensorFlow first (``keep_tensorflow_off_gpus``); the data pipelines run on the CPU
anyway. Hiding is process-wide in TensorFlow and possible only before TensorFlow starts
its devices. ``get_dataset_info`` only reads metadata and leaves TensorFlow alone.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from swd_keras.data import sources
from swd_keras.data.augment import Preprocessing
from swd_keras.data.info import DatasetError, DatasetInfo
from swd_keras.data.splits import (
    SALT_SEARCH_TRAIN_AUGMENT,
    SALT_SEARCH_TRAIN_ORDER,
    SALT_SEARCH_VAL_AUGMENT,
    SALT_SEARCH_VAL_ORDER,
    SALT_TRAIN_AUGMENT,
    SALT_TRAIN_ORDER,
    Split,
    epoch_batches,
    evaluation_batches,
    over_epochs,
    stream_key,
)

DEFAULT_CUTOUT: dict[str, int] = {
    "cifar10": 16,
    "cifar100": 16,
    "digits": 4,
    "synthetic": 8,
    "imagenet2012": 0,
}
"""``train_data``'s cutout side per dataset: half the image side (DARTS' 16 on 32x32
CIFAR); none on ImageNet, where DARTS' retraining uses none. Users' datasets: half the
shorter side (``default_cutout``)."""


def default_cutout(info: DatasetInfo) -> int:
    """The cutout side ``train_data`` applies by default (``DEFAULT_CUTOUT``)."""
    if info.source.get("kind") == "builtin":
        return DEFAULT_CUTOUT[info.name]
    return min(info.input_shape[:2]) // 2


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
        num_validation_examples: examples set aside as the validation split (after
            ``limit``; 0 without ``validation``).
    """

    dataset: tf.data.Dataset
    steps_per_epoch: int
    info: DatasetInfo
    num_examples: int
    num_test_examples: int
    batch_size: int
    cutout: int
    num_validation_examples: int
    _test: Split = dataclasses.field(repr=False)
    _preprocessing: Preprocessing = dataclasses.field(repr=False)
    _validation: Split | None = dataclasses.field(repr=False)

    def test_dataset(self, batch_size: int | None = None) -> tf.data.Dataset:
        """The test split as ``(x, y)`` batches: unaugmented, never shuffled, remainder kept.

        Args:
            batch_size: batch size; defaults to the training batch size.

        Returns:
            A ``tf.data.Dataset`` of float32 NHWC images and int32 labels.
        """
        return self._evaluation_batches(self._test, batch_size)

    def validation_dataset(self, batch_size: int | None = None) -> tf.data.Dataset:
        """The validation split (``train_data``'s ``validation``) as ``test_dataset`` gives
        the test split.

        Raises:
            ValueError: the data was made without ``validation``.
        """
        if self._validation is None:
            raise ValueError("this data has no validation split: pass validation=FRACTION "
                             "to train_data.")
        return self._evaluation_batches(self._validation, batch_size)

    def _evaluation_batches(self, split: Split, batch_size: int | None) -> tf.data.Dataset:
        size = self.batch_size if batch_size is None else _check_positive(batch_size, "batch_size")
        return evaluation_batches(split, self._preprocessing, size)


def get_dataset_info(name, data_dir: str | None = None, image_size=None,
                     test_dir: str | None = None, holdout: float | None = None) -> DatasetInfo:
    """Describes a dataset: a built-in without loading its examples (tfds: metadata only).

    For a built-in tfds dataset that is not prepared yet, the split sizes are the
    published ones. A user's dataset is read (its statistics come from its training
    split). Starts no TensorFlow device (see the module's note on GPUs).

    Args:
        name: one of ``DATASETS``, ``tfds:NAME``, an image folder, an ``.npz`` file or
            an ``ArrayDataset`` (``swd_keras.data.sources.FORMS``).
        data_dir: tfds data folder (default: tfds' own, ``~/tensorflow_datasets``).
        image_size: ``(height, width)`` to resize a user's images to [default: their
            own size, which must then be the same for all]; not for the built-ins.
        test_dir: an image folder's test folder [default: ``DATASET/test`` if there is
            one, else ``holdout`` of the images are held out].
        holdout: the fraction held out as the test split where a user's dataset has
            none [default: 0.1]; a stratified part drawn with a fixed seed.

    Returns:
        The ``DatasetInfo``.

    Example:
        >>> get_dataset_info("cifar10").input_shape
        (32, 32, 3)
    """
    return sources.info(name, data_dir, image_size, test_dir, holdout)


def search_data(
    name,
    batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    epochs: int = 1,
    initial_epoch: int = 0,
    augment: bool = True,
    limit: int | None = None,
    image_size=None,
    test_dir: str | None = None,
    holdout: float | None = None,
    validation: float = 0.0,
) -> SearchData:
    """The search input: the training split halved into search-train and search-validation.

    The halves are a class-stratified 50/50 split of the training split drawn with
    ``seed`` (ImageNet, streamed: tfds' ``train[:50%]`` and ``train[50%:]``); the test
    split is not touched. Both halves get the training augmentation (as in DARTS' search).
    On JAX and PyTorch, hides the GPUs from TensorFlow first (see the module's note).

    Args:
        name: one of ``DATASETS``, ``tfds:NAME``, an image folder, an ``.npz`` file or
            an ``ArrayDataset`` (``swd_keras.data.sources.FORMS``).
        batch_size: examples per batch of each half.
        seed: non-negative integer; the split, the order of every epoch and the
            augmentation are functions of it (and of the epoch).
        data_dir: tfds data folder (prepared copies, or ``downloads/manual`` archives).
        epochs: the epoch to stop before (as ``model.fit``'s ``epochs``).
        initial_epoch: the first epoch (as ``model.fit``'s ``initial_epoch``).
        augment: apply the training augmentation; ``False`` only normalises.
        limit: at most this many examples per half (quick runs and tests).
        image_size: ``(height, width)`` to resize a user's images to [default: their
            own size, which must then be the same for all]; not for the built-ins.
        test_dir: an image folder's test folder [default: ``DATASET/test`` if there is
            one, else ``holdout`` of the images are held out].
        holdout: the fraction held out as the test split where a user's dataset has
            none [default: 0.1]; a stratified part drawn with a fixed seed.
        validation: the fraction of the training split set aside as a validation split
            that neither half contains (``train_data``'s ``validation_dataset``: the same
            examples); 0 for none.

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
    _check_common(batch_size, seed, epochs, initial_epoch, limit)
    keep_tensorflow_off_gpus()
    source = sources.load(name, data_dir, image_size, test_dir, holdout, validation)
    train_half, val_half = (half.limited(limit) for half in source.search_halves(seed))
    steps = min(train_half.size, val_half.size) // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the search halves of {source.info.name} "
            f"({train_half.size} and {val_half.size} examples): lower batch_size"
            + (" or raise limit" if limit is not None else "")
        )
    prep = source.preprocessing
    streams = (
        (train_half, SALT_SEARCH_TRAIN_ORDER, SALT_SEARCH_TRAIN_AUGMENT),
        (val_half, SALT_SEARCH_VAL_ORDER, SALT_SEARCH_VAL_AUGMENT),
    )
    keys = [(half, stream_key(seed, order), stream_key(seed, aug)) for half, order, aug in streams]

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.zip(
            tuple(
                epoch_batches(half, prep, epoch, order, aug, batch_size, steps, augment)
                for half, order, aug in keys
            )
        )

    return SearchData(
        dataset=over_epochs(initial_epoch, epochs, one_epoch),
        steps_per_epoch=steps,
        info=source.info,
        val_dataset=evaluation_batches(val_half, prep, batch_size),
        num_train_examples=train_half.size,
        num_val_examples=val_half.size,
    )


def train_data(
    name,
    batch_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    epochs: int = 1,
    initial_epoch: int = 0,
    cutout: int | None = None,
    augment: bool = True,
    limit: int | None = None,
    image_size=None,
    test_dir: str | None = None,
    holdout: float | None = None,
    validation: float = 0.0,
) -> TrainData:
    """The retraining input: the whole training split, augmented, with cutout.

    On JAX and PyTorch, hides the GPUs from TensorFlow first (see the module's note).

    Args:
        name: one of ``DATASETS``, ``tfds:NAME``, an image folder, an ``.npz`` file or
            an ``ArrayDataset`` (``swd_keras.data.sources.FORMS``).
        batch_size: examples per batch.
        seed: non-negative integer; the order of every epoch and the augmentation are
            functions of it (and of the epoch).
        data_dir: tfds data folder (prepared copies, or ``downloads/manual`` archives).
        epochs: the epoch to stop before (as ``model.fit``'s ``epochs``).
        initial_epoch: the first epoch (as ``model.fit``'s ``initial_epoch``).
        cutout: side of the square ``cutout`` zeroes in each training image, smaller
            than the image; 0 for none; ``None`` for the dataset's default
            (``DEFAULT_CUTOUT``: DARTS' 16 on CIFAR, none on ImageNet, half the shorter
            side of a user's images). Applied only with ``augment``.
        augment: apply the training augmentation and cutout; ``False`` only normalises.
        limit: at most this many training examples and this many test examples.
        image_size: ``(height, width)`` to resize a user's images to [default: their
            own size, which must then be the same for all]; not for the built-ins.
        test_dir: an image folder's test folder [default: ``DATASET/test`` if there is
            one, else ``holdout`` of the images are held out].
        holdout: the fraction held out as the test split where a user's dataset has
            none [default: 0.1]; a stratified part drawn with a fixed seed.
        validation: the fraction of the training split set aside as a validation split
            (``TrainData.validation_dataset``), stratified and drawn with a fixed seed,
            so that every run on the dataset validates on the same examples; 0 for none.

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
    _check_common(batch_size, seed, epochs, initial_epoch, limit)
    if cutout is not None and (isinstance(cutout, bool) or not isinstance(cutout, int)
                               or cutout < 0):
        raise ValueError(f"cutout must be a non-negative integer (0 for none), got {cutout!r}")
    keep_tensorflow_off_gpus()
    source = sources.load(name, data_dir, image_size, test_dir, holdout, validation)
    label, default = source.info.name, default_cutout(source.info)
    cutout = default if cutout is None else cutout
    side = min(source.info.input_shape[:2])
    if cutout >= side:
        raise ValueError(
            f"cutout={cutout} would blank whole {label} images ({side} pixels wide): use at "
            f"most {side - 1} (the default for {label} is {default})"
        )
    train = source.train.limited(limit)
    test = source.test.limited(limit)
    validation_split = source.validation.limited(limit) if source.validation else None
    steps = train.size // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} is larger than the training split of {label} "
            f"({train.size} examples): lower batch_size"
            + (" or raise limit" if limit is not None else "")
        )
    order_key = stream_key(seed, SALT_TRAIN_ORDER)
    augment_key = stream_key(seed, SALT_TRAIN_AUGMENT)

    def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
        return epoch_batches(
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
        dataset=over_epochs(initial_epoch, epochs, one_epoch),
        steps_per_epoch=steps,
        info=source.info,
        num_examples=train.size,
        num_test_examples=test.size,
        batch_size=batch_size,
        cutout=cutout if augment else 0,
        num_validation_examples=validation_split.size if validation_split else 0,
        _test=test,
        _preprocessing=source.preprocessing,
        _validation=validation_split,
    )


def run_record(info: DatasetInfo, pixel_max: float) -> dict:
    """What a run folder's ``config.json`` records of its data, beside the settings.

    Args:
        info: the dataset's ``DatasetInfo``.
        pixel_max: the stored pixel value that maps to 1.0 (16 for digits, else 255).

    Returns:
        ``{"preprocessing": {"input_shape", "mean", "std", "pixel_max"}, "num_classes",
        "class_names", "dataset"}`` (``dataset``: ``DatasetInfo.source``), JSON-ready.
    """
    return {"preprocessing": {"input_shape": list(info.input_shape), "mean": list(info.mean),
                              "std": list(info.std), "pixel_max": pixel_max},
            "num_classes": info.num_classes, "class_names": list(info.class_names),
            "dataset": info.source}


def check_same_data(record: dict, info: DatasetInfo, run_dir) -> None:
    """Raises a DatasetError unless ``info`` describes the data ``record`` (a run's
    ``config.json``) was started on: a resumed run must see the same examples.

    Args:
        record: the run's record (``run_record``'s keys; older records pass unchecked).
        info: the reopened dataset's ``DatasetInfo``.
        run_dir: the run folder, for the message.
    """
    recorded = record.get("dataset") or {}
    if recorded.get("sha256") not in (None, info.source.get("sha256")):
        where = recorded.get("path") or recorded.get("name") or "the arrays"
        raise DatasetError("dataset", f"{run_dir} was started on other data: {where} has "
                                      f"changed since (its files, sizes or contents differ); "
                                      f"restore it or start a new run")


def keep_tensorflow_off_gpus() -> None:
    """On the JAX and PyTorch backends, hides the GPUs from TensorFlow (tf.data runs on
    the CPU); on TensorFlow, which trains on them, does nothing.

    TensorFlow's device list is process-wide and fixed once it has started: a process
    whose TensorFlow already runs keeps its devices.
    """
    if keras.backend.backend() == "tensorflow":
        return
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TensorFlow already started: its device set is fixed.
        pass


def _check_positive(value: int, argument: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{argument} must be a positive integer, got {value!r}")
    return int(value)


def _check_common(
    batch_size: int, seed: int, epochs: int, initial_epoch: int, limit: int | None
) -> None:
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
