"""The settings of a retraining run (SPEC §5) and its run folder's record."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from swd_keras.cells import check_drop_path_rate
from swd_keras.data.run_config import DatasetRunConfig
from swd_keras.distribute import check_devices
from swd_keras.runs import read_run

RESULTS_FILE, MODEL_FILE, TENSORBOARD_DIR = "results.json", "model.keras", "tensorboard"


def check_positive_int(value, name: str) -> int:
    """``value`` if it is a positive integer, else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    return value


def retrain_defaults(dataset) -> dict[str, Any]:
    """SPEC §5's settings for ``dataset``: ImageNet's for ``imagenet2012``, else CIFAR's."""
    if dataset == "imagenet2012":
        return dict(epochs=250, batch_size=256, channels=48, learning_rate=0.1,
                    weight_decay=3e-5, label_smoothing=0.1)
    return dict(epochs=600, batch_size=96, channels=36, learning_rate=0.025,
                weight_decay=3e-4, label_smoothing=0.0)


@dataclasses.dataclass(frozen=True)
class RetrainConfig(DatasetRunConfig):
    """The settings of a retraining run (SPEC §5; CIFAR defaults), validated when made.

    Args:
        genotype: a built-in name or a genotype JSON path.
        dataset: a built-in name (``swd_keras.data.DATASETS``), ``tfds:NAME``, an image
            folder, an ``.npz`` file or an ``ArrayDataset`` (``swd_keras.data.sources.FORMS``);
            paths are made absolute.
        epochs: training epochs.
        batch_size: examples per step.
        channels: C of the first cells.
        layers: number of cells L.
        learning_rate: initial SGD learning rate.
        min_learning_rate: where the cosine schedule ends.
        momentum: SGD momentum.
        weight_decay: L2 coefficient (PyTorch semantics, see ``TorchSGD``).
        grad_clip: gradient global-norm clip (0 for none).
        cutout: cutout square side (0 for none; None: the dataset's default,
            ``swd_keras.data.DEFAULT_CUTOUT``, 16 for CIFAR).
        drop_path: maximum drop-path probability.
        auxiliary: train with the auxiliary head.
        auxiliary_weight: weight of the auxiliary loss.
        label_smoothing: label smoothing of the loss.
        seed: seed of initialisation, data order, augmentation and drop path.
        limit: use at most this many training and test examples (smoke runs).
        devices: ``"all"`` or a device count: the replicas ``batch_size`` is split over
            (``swd_keras.distribute.data_parallel``).
        image_size: ``(height, width)`` a user's images are resized to [default: their own].
        test_dir: an image folder's test folder [default: ``DATASET/test``, else ``holdout``].
        holdout: the fraction held out as the test split where a user's dataset has none
            [default: 0.1].
        validation: the fraction of the training split set aside as a validation split
            (not trained on); ``results.json`` then records ``val_top1`` on it (0: none).
    """

    genotype: str
    dataset: Any
    epochs: int = 600
    batch_size: int = 96
    channels: int = 36
    layers: int = 20
    learning_rate: float = 0.025
    min_learning_rate: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    cutout: int | None = None
    drop_path: float = 0.2
    auxiliary: bool = True
    auxiliary_weight: float = 0.4
    label_smoothing: float = 0.0
    seed: int = 0
    limit: int | None = None
    devices: int | str = 1
    image_size: tuple[int, int] | None = None
    test_dir: str | None = None
    holdout: float | None = None
    validation: float = 0.0

    REQUIRED = ("epochs", "batch_size", "channels", "layers", "seed")

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", check_devices(self.devices))
        self._check_data_fields()
        super().__post_init__()

    def validate(self) -> RetrainConfig:
        """Raises a ValueError naming the first bad setting; returns self."""
        for name in ("epochs", "batch_size", "channels", "layers"):
            check_positive_int(getattr(self, name), name)
        for name in ("learning_rate", "min_learning_rate", "weight_decay", "grad_clip",
                     "auxiliary_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}.")
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(f"min_learning_rate ({self.min_learning_rate}) must not exceed "
                             f"learning_rate ({self.learning_rate}).")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}.")
        check_drop_path_rate(self.drop_path, "drop_path")
        if self.cutout is not None and (isinstance(self.cutout, bool)
                                        or not isinstance(self.cutout, int) or self.cutout < 0):
            raise ValueError(f"cutout must be a non-negative integer, got {self.cutout!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.limit is not None:
            check_positive_int(self.limit, "limit")
        return self

    @property
    def head(self) -> str:
        """The network head: ``"imagenet"`` for imagenet2012, else ``"cifar"``."""
        return "imagenet" if self.dataset == "imagenet2012" else "cifar"


def raw_pixel_max(dataset) -> float:
    """The largest raw pixel value of ``dataset``'s stored images (what 1.0 maps from).

    Scikit-learn's digits store 0..16; every other dataset stores 0..255 bytes. The
    export's preprocessing reads it from the run's record.
    """
    return 16.0 if dataset == "digits" else 255.0


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The record (``config.json``) of a retraining run folder.

    Raises:
        ValueError: no config.json, or not a retraining run's.
    """
    return read_run(run_dir, "retrain")
