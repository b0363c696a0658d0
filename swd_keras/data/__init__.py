"""Datasets for the search and the retraining, fed through tf.data to every Keras backend.

Five built-in datasets (``DATASETS``): ``cifar10``, ``cifar100`` and ``imagenet2012``
through TensorFlow Datasets (``sources/tfds.py``), ``digits`` (scikit-learn's bundled 8x8
digits, no download) and ``synthetic`` (a small generated set for smoke runs). Users'
datasets go where a name goes: ``tfds:NAME`` (any tfds image classification dataset), an
image folder (one subfolder per class), an ``.npz`` file (``NPZ_KEYS``) or an
``ArrayDataset`` of NumPy arrays.

The package: ``api`` (the functions below), ``augment`` (pad-crop-flip, ImageNet crops,
cutout), ``splits`` (search halves, per-(seed, epoch) orders, stratified parts),
``sources`` (one module per source) and ``names`` (short names, without TensorFlow).
Every public name loads its module on first use, so the command line can read
``names`` before it chooses the Keras backend.

Example:
    >>> data = search_data("digits", batch_size=32, epochs=3)
    >>> model.fit(data.dataset, epochs=3, steps_per_epoch=data.steps_per_epoch)
"""

_LAZY = {
    **dict.fromkeys(("DEFAULT_CUTOUT", "SearchData", "TrainData", "check_same_data",
                     "default_cutout", "get_dataset_info", "keep_tensorflow_off_gpus",
                     "run_record", "search_data", "train_data"), "swd_keras.data.api"),
    "cutout": "swd_keras.data.augment",
    **dict.fromkeys(("DATASETS", "DatasetError", "DatasetInfo", "DatasetUnavailableError"),
                    "swd_keras.data.info"),
    **dict.fromkeys(("NPZ_KEYS", "ArrayDataset"), "swd_keras.data.sources.user_arrays"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'swd_keras.data' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY})


__all__ = [*_LAZY]
