"""Datasets for the search and the retraining, fed through tf.data to every Keras backend.

Five datasets (``DATASETS``): ``cifar10``, ``cifar100`` and ``imagenet2012`` through
TensorFlow Datasets (``sources/tfds.py``), ``digits`` (scikit-learn's bundled 8x8 digits,
no download) and ``synthetic`` (a small generated set for smoke runs).

The package: ``api`` (the functions below), ``augment`` (pad-crop-flip, ImageNet crops,
cutout), ``splits`` (search halves, per-(seed, epoch) orders, stratified parts) and
``sources`` (one module per source).

Example:
    >>> data = search_data("digits", batch_size=32, epochs=3)
    >>> model.fit(data.dataset, epochs=3, steps_per_epoch=data.steps_per_epoch)
"""

from swd_keras.data.api import (
    DEFAULT_CUTOUT,
    SearchData,
    TrainData,
    get_dataset_info,
    keep_tensorflow_off_gpus,
    search_data,
    train_data,
)
from swd_keras.data.augment import cutout
from swd_keras.data.info import DATASETS, DatasetInfo, DatasetUnavailableError

__all__ = [
    "DATASETS", "DEFAULT_CUTOUT", "DatasetInfo", "DatasetUnavailableError", "SearchData",
    "TrainData", "cutout", "get_dataset_info", "keep_tensorflow_off_gpus", "search_data",
    "train_data",
]
