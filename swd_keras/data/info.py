"""What every part of the data package shares: the dataset names, ``DatasetInfo`` and the
error for a dataset that cannot be obtained here."""

from __future__ import annotations

import dataclasses

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "digits", "synthetic", "imagenet2012")
"""The dataset names that ``search_data``, ``train_data`` and ``get_dataset_info`` accept."""


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
