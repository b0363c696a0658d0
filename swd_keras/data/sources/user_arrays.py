"""Users' NumPy arrays (``ArrayDataset``) and ``.npz`` files of them.

An ``.npz`` file holds the arrays under the keys ``x`` (images) and ``y`` (labels), and
optionally ``x_test`` and ``y_test`` (the test split; without them a stratified fraction
of ``x`` is held out) and ``class_names`` (one string per label).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import zipfile
from pathlib import Path

import numpy as np

from swd_keras.data.info import DatasetError
from swd_keras.data.sources import Source
from swd_keras.data.sources.own import in_memory_source, resize_all, sha256

NPZ_KEYS = ("x", "y", "x_test", "y_test", "class_names")
"""The keys an ``.npz`` dataset may hold; ``x`` and ``y`` are required."""

ARRAYS_PREFIX = "arrays:"
"""How a run records a dataset of arrays: ``arrays:`` and the first 16 hex digits of
its SHA-256 (arrays cannot be reopened from a record; a resumed run takes them again)."""


def _images(x, argument: str) -> np.ndarray:
    """``x`` as uint8 ``(N, H, W, C)``: uint8 as is, floats in [0, 1] scaled by 255."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or 0 in x.shape:
        raise DatasetError(argument, f"{argument} must be images (N, H, W) or (N, H, W, C), "
                                     f"got shape {x.shape}")
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all() \
            and x.min() >= 0.0 and x.max() <= 1.0:
        return np.round(x * 255).astype(np.uint8)
    raise DatasetError(argument, f"{argument} must hold uint8 pixels (0..255) or floats in "
                                 f"[0, 1], got {x.dtype} values in [{x.min()}, {x.max()}]")


def _labels(y, count: int, argument: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != count or not np.issubdtype(y.dtype, np.integer) \
            or (count and y.min() < 0):
        raise DatasetError(argument, f"{argument} must be {count} non-negative integer labels "
                                     f"(one per image), got shape {y.shape} of {y.dtype}")
    return y.astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """A dataset of NumPy arrays, passed where a dataset name goes.

    Attributes:
        x: training images, uint8 (0..255) or floats in [0, 1], shape ``(N, H, W)``
            (grey) or ``(N, H, W, C)``.
        y: ``N`` integer labels ``0 .. K - 1``.
        x_test: the test split's images (optional; without it a stratified fraction of
            ``x``, ``holdout``, is held out).
        y_test: the test split's labels (with ``x_test``).
        class_names: the ``K`` labels' names [default: ``"0"``, ``"1"``, ...].

    Example:
        >>> data = ArrayDataset(x=images, y=labels, class_names=("cat", "dog"))
        >>> search_data(data, batch_size=32)
    """

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = _images(self.x, "x")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", _labels(self.y, len(x), "y"))
        if (self.x_test is None) != (self.y_test is None):
            raise DatasetError("x_test", "x_test and y_test come together: give both or neither")
        if self.x_test is not None:
            x_test = _images(self.x_test, "x_test")
            if x_test.shape[1:] != x.shape[1:]:
                raise DatasetError("x_test", f"x_test images are {x_test.shape[1:]}, x images "
                                             f"{x.shape[1:]}: they must be the same")
            object.__setattr__(self, "x_test", x_test)
            object.__setattr__(self, "y_test", _labels(self.y_test, len(x_test), "y_test"))
        num_classes = int(max(self.y.max(), -1 if self.y_test is None else self.y_test.max())) + 1
        if self.class_names is not None:
            names = tuple(str(name) for name in np.asarray(self.class_names).reshape(-1))
            if len(names) < num_classes:
                raise DatasetError("class_names", f"class_names names {len(names)} classes; "
                                                  f"the labels go up to {num_classes - 1}")
            object.__setattr__(self, "class_names", names)
        if len(np.unique(self.y)) < 2:
            raise DatasetError("y", "y must hold at least two classes")

    @functools.cached_property
    def sha256(self) -> str:
        """The SHA-256 of the arrays (shapes, dtypes and bytes) and the class names."""
        parts = []
        for array in (self.x, self.y, self.x_test, self.y_test):
            if array is None:
                parts.append("none")
            else:
                parts += [f"{array.shape}{array.dtype}", np.ascontiguousarray(array).tobytes()]
        return sha256(*parts, repr(self.class_names))

    @property
    def record(self) -> str:
        """The dataset as a run records it (``ARRAYS_PREFIX`` + a short hash)."""
        return ARRAYS_PREFIX + self.sha256[:16]


def load_arrays(data: ArrayDataset, image_size: tuple[int, int] | None,
                holdout: float | None, label: str = "arrays",
                source: dict | None = None) -> Source:
    """The source of an ``ArrayDataset``, resized to ``image_size`` if given; ``label``
    and ``source`` name it in its ``DatasetInfo`` [default: arrays in memory]."""
    num_classes = int(max(data.y.max(), -1 if data.y_test is None else data.y_test.max())) + 1
    names = data.class_names or tuple(str(i) for i in range(num_classes))
    return in_memory_source(
        label, resize_all(data.x, image_size), data.y,
        None if data.x_test is None else resize_all(data.x_test, image_size), data.y_test,
        names, holdout, source or {"kind": "arrays", "sha256": data.sha256})


def load_npz(path: str, image_size: tuple[int, int] | None, holdout: float | None) -> Source:
    """The source of an ``.npz`` file (keys ``NPZ_KEYS``)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            keys = set(arrays.files)
            missing = [key for key in ("x", "y") if key not in keys]
            if missing:
                raise DatasetError("dataset", f"{path} has no {' or '.join(missing)} array: an "
                                              f".npz dataset holds x and y (and optionally "
                                              f"x_test, y_test, class_names); it has "
                                              f"{sorted(keys) or 'none'}")
            data = ArrayDataset(**{key: arrays[key] for key in NPZ_KEYS if key in keys})
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        if isinstance(error, DatasetError):
            raise
        raise DatasetError("dataset", f"{path}: cannot read it as .npz ({error})") from None
    record = {"kind": "npz", "path": path, "sha256": file_sha256(path)}
    return load_arrays(data, image_size, holdout, Path(path).name, record)


def file_sha256(path: str) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
