"""The datasets' sources: one module per source, each giving a ``Source``.

``tfds`` (cifar10, cifar100, imagenet2012 through TensorFlow Datasets), ``digits``
(scikit-learn's bundled 8x8 digits) and ``synthetic`` (a small generated set); the
in-memory ones are built on ``arrays``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from swd_keras.data.augment import Preprocessing
from swd_keras.data.info import DatasetInfo
from swd_keras.data.splits import Split

TFDS_DATASETS = frozenset({"cifar10", "cifar100", "imagenet2012"})


@dataclasses.dataclass(frozen=True)
class Source:
    """A loaded dataset: its info, preprocessing, splits, and how to halve it for search."""

    info: DatasetInfo
    preprocessing: Preprocessing
    train: Split
    test: Split
    search_halves: Callable[[int], tuple[Split, Split]]


def load(name: str, data_dir: str | None) -> Source:
    """The source of dataset ``name`` (tfds: prepared first if it can be)."""
    from swd_keras.data.sources import tfds

    if name in TFDS_DATASETS:
        return tfds.load(name, data_dir)
    return in_memory(name)


def info(name: str, data_dir: str | None) -> DatasetInfo:
    """``name``'s ``DatasetInfo`` without loading its examples (tfds: metadata only)."""
    from swd_keras.data.sources import tfds

    if name in TFDS_DATASETS:
        return tfds.info(name, data_dir)
    return in_memory(name).info


@functools.cache
def in_memory(name: str) -> Source:
    """digits or synthetic: small, built in memory once per process."""
    from swd_keras.data.sources import digits, synthetic

    return digits.load() if name == "digits" else synthetic.load()
