"""What every part of the data package shares: the dataset names, ``DatasetInfo`` and the
error for a dataset that cannot be obtained here."""

from __future__ import annotations

import dataclasses

DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "digits", "synthetic", "imagenet2012")
"""The dataset names that ``search_data``, ``train_data`` and ``get_dataset_info`` accept."""


class DatasetUnavailableError(ValueError):
    """A tfds dataset is not prepared and can be neither downloaded nor built here."""


class DatasetError(ValueError):
    """Bad dataset input (a folder, file, array or tfds name, or one of its settings).

    Attributes:
        argument: the argument at fault (``"dataset"``, ``"image_size"``, ``"test_dir"``,
            ``"holdout"``, ``"x"``, ``"y"``...), so that the command line names its option.
    """

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and a training loop need to know about a dataset.

    Attributes:
        name: one of ``DATASETS``, or a short label of the user's dataset (a folder's or
            file's name, ``tfds:NAME``, ``arrays``).
        input_shape: ``(height, width, channels)`` of the images the pipelines yield.
        num_classes: number of labels.
        num_train: examples in the training split (``train_data`` uses all of them;
            ``search_data`` halves them).
        num_val: examples in the search-validation half (``num_train // 2``).
        num_test: examples in the test split.
        mean: per-channel mean in 0..1 units, subtracted before dividing by ``std``.
        std: per-channel standard deviation in 0..1 units.
        class_names: the name of each label, in label order.
        source: where the examples come from, JSON-ready (``kind``: builtin, tfds, folder,
            npz or arrays; a folder's absolute ``path`` and ``holdout_files``; an ``.npz``
            file's path; a ``sha256`` of what identifies the data). Run folders record it,
            and a resumed run refuses data whose ``sha256`` differs.
    """

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_val: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()
    source: dict = dataclasses.field(default_factory=dict, compare=False)
