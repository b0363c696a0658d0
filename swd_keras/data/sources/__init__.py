"""The datasets' sources: one module per source, each giving a ``Source``.

Built-ins: ``tfds`` (cifar10, cifar100, imagenet2012 through TensorFlow Datasets),
``digits`` (scikit-learn's bundled 8x8 digits) and ``synthetic`` (a small generated set).
Users' datasets (``dataset_kind``): ``tfds:NAME`` (``tfds.load_any``), an image folder
(``folder``), an ``.npz`` file or an ``ArrayDataset`` (``user_arrays``); what they share
is in ``own``. The in-memory ones are built on ``arrays``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

from swd_keras.data.augment import Preprocessing
from swd_keras.data.info import DATASETS, DatasetError, DatasetInfo
from swd_keras.data.names import TFDS_PREFIX
from swd_keras.data.splits import Split

TFDS_DATASETS = frozenset({"cifar10", "cifar100", "imagenet2012"})
FORMS = (f"a built-in name ({', '.join(DATASETS)}), tfds:NAME (a tensorflow-datasets image "
         f"classification dataset), an image folder (one subfolder per class) or an .npz "
         f"file (x, y[, x_test, y_test])")
"""The forms a dataset argument takes, for error messages."""


@dataclasses.dataclass(frozen=True)
class Source:
    """A loaded dataset: its info, preprocessing, splits, and how to halve it for search."""

    info: DatasetInfo
    preprocessing: Preprocessing
    train: Split
    test: Split
    search_halves: Callable[[int], tuple[Split, Split]]
    validation: Split | None = None
    """Examples set aside from the training split (``hold_out_validation``), or None."""


def dataset_kind(dataset) -> str:
    """Which source ``dataset`` names: ``builtin``, ``tfds``, ``folder``, ``npz`` or
    ``arrays`` (an ``ArrayDataset``).

    Raises:
        DatasetError: none of these (the message lists the forms), or a run's record of
            arrays (``arrays:HASH``), which only the arrays themselves can reopen.
    """
    from swd_keras.data.sources.user_arrays import ARRAYS_PREFIX, ArrayDataset

    if isinstance(dataset, ArrayDataset):
        return "arrays"
    if not isinstance(dataset, str | Path) or not str(dataset):
        raise DatasetError("dataset", f"dataset must be one of: {FORMS}, or an "
                                      f"ArrayDataset; got {dataset!r}")
    dataset = str(dataset)
    if dataset in DATASETS:
        return "builtin"
    if dataset.startswith(TFDS_PREFIX) and dataset[len(TFDS_PREFIX):]:
        return "tfds"
    if dataset.startswith(ARRAYS_PREFIX):
        raise DatasetError("dataset", f"this run was made from NumPy arrays ({dataset}): "
                                      f"pass the same ArrayDataset again (dataset=...)")
    path = Path(dataset).expanduser()
    if path.is_dir():
        return "folder"
    if path.is_file() and path.suffix == ".npz":
        return "npz"
    raise DatasetError("dataset", f"dataset must be one of: {FORMS}; {dataset!r} is not "
                                  f"one of these"
                                  + (" (no such file or folder)" if not path.exists() else ""))


def check_settings(dataset, image_size=None, test_dir=None, holdout=None,
                   validation=0.0) -> tuple:
    """The dataset settings checked and made reopenable, without reading any data.

    Paths become absolute (a resumed run may start from another folder).

    Args:
        dataset: one of ``FORMS`` or an ``ArrayDataset``.
        image_size: ``(height, width)`` to resize to (not for built-ins).
        test_dir: an image folder's test folder (folders only).
        holdout: the fraction held out where there is no test split (not for built-ins).
        validation: the fraction of the training split set aside as a validation split
            (``hold_out_validation``); 0 for none.

    Returns:
        ``(dataset, image_size, test_dir, holdout, validation)``, normalised.

    Raises:
        DatasetError: a bad setting, naming it.
    """
    from swd_keras.data.sources.own import check_holdout, check_image_size

    kind = dataset_kind(dataset)
    image_size, holdout = check_image_size(image_size), check_holdout(holdout)
    if kind == "builtin" and (image_size is not None or holdout is not None):
        raise DatasetError("image_size" if image_size is not None else "holdout",
                           f"{dataset} has its own image size and test split: image_size and "
                           f"holdout apply to tfds:NAME, image folders, .npz files and arrays")
    if test_dir is not None:
        if kind != "folder":
            raise DatasetError("test_dir", f"test_dir applies to image folders, not {dataset!r}")
        if not Path(test_dir).expanduser().is_dir():
            raise DatasetError("test_dir", f"test_dir {test_dir} is not a folder")
        test_dir = str(Path(test_dir).expanduser().resolve())
    if isinstance(validation, bool) or not isinstance(validation, int | float) \
            or not 0.0 <= validation < 1.0:
        raise DatasetError("validation", f"validation must be a fraction in [0, 1) (0 for "
                                         f"none), got {validation!r}")
    if kind in ("folder", "npz"):
        dataset = str(Path(dataset).expanduser().resolve())
    return dataset, image_size, test_dir, holdout, float(validation)


def recorded(dataset) -> str:
    """``dataset`` as a run's ``config.json`` stores it: arrays as ``arrays:HASH``."""
    return dataset.record if dataset_kind(dataset) == "arrays" else str(dataset)


def with_arrays(stored: dict, dataset) -> dict:
    """A run's stored config (JSON) with the ``ArrayDataset`` passed to resume a run made
    from arrays; unchanged for None (``check_same_data`` compares the arrays' hash).

    Raises:
        DatasetError: arrays passed for a run made from a name, folder or file.
    """
    from swd_keras.data.sources.user_arrays import ARRAYS_PREFIX

    if dataset is None:
        return stored
    if not str(stored.get("dataset", "")).startswith(ARRAYS_PREFIX):
        raise DatasetError("dataset", f"dataset is for resuming a run made from arrays; this "
                                      f"run was made from {stored.get('dataset')!r}, which it "
                                      f"reopens itself")
    return {**stored, "dataset": dataset}


def load(dataset, data_dir: str | None, image_size=None, test_dir=None,
         holdout=None, validation=0.0) -> Source:
    """The source of ``dataset`` (tfds: prepared first if it can be; see ``check_settings``
    for the arguments), with its validation split set aside if ``validation``."""
    dataset, image_size, test_dir, holdout, validation = check_settings(
        dataset, image_size, test_dir, holdout, validation)
    source = _load(dataset, data_dir, image_size, test_dir, holdout)
    return hold_out_validation(source, validation) if validation else source


def _load(dataset, data_dir: str | None, image_size, test_dir, holdout) -> Source:
    from swd_keras.data.sources import folder, tfds, user_arrays

    kind = dataset_kind(dataset)
    if kind == "builtin":
        return tfds.load(dataset, data_dir) if dataset in TFDS_DATASETS else in_memory(dataset)
    if kind == "tfds":
        return tfds.load_any(dataset[len(TFDS_PREFIX):], data_dir, image_size, holdout)
    if kind == "folder":
        return folder.load(dataset, image_size, test_dir, holdout)
    if kind == "npz":
        return user_arrays.load_npz(dataset, image_size, holdout)
    return user_arrays.load_arrays(dataset, image_size, holdout)


def hold_out_validation(source: Source, fraction: float) -> Source:
    """``source`` with a stratified ``fraction`` of its training split set aside as its
    ``validation`` split: the training split and the search halves are the rest.

    The part is drawn with a fixed seed (``own.held_out``), so every run and every trial
    of a tuning project on this dataset validates on the same examples, whatever its seed.

    Raises:
        DatasetError: a streamed dataset (imagenet2012), or a fraction that leaves no
            validation or no training example of some class.
    """
    from swd_keras.data.sources.arrays import stratified_halves
    from swd_keras.data.sources.own import held_out
    from swd_keras.data.splits import ArraySplit

    train = source.train
    if not isinstance(train, ArraySplit):
        raise DatasetError("validation", f"validation needs a dataset read by index; "
                                         f"{source.info.name} is streamed")
    kept, validation = held_out(train.store.labels[train.indices], fraction,
                                f"{source.info.name}'s training split", "validation")
    kept, validation = train.indices[kept], train.indices[validation]
    info = dataclasses.replace(source.info, num_train=len(kept), num_val=len(kept) // 2)
    return dataclasses.replace(
        source, info=info, train=ArraySplit(train.store, kept),
        search_halves=functools.partial(stratified_halves, train.store, kept),
        validation=ArraySplit(train.store, validation))


def info(dataset, data_dir: str | None, image_size=None, test_dir=None,
         holdout=None) -> DatasetInfo:
    """``dataset``'s ``DatasetInfo``: a built-in tfds dataset's from its metadata only;
    a user's dataset is read (its statistics come from its training split)."""
    from swd_keras.data.sources import tfds

    if isinstance(dataset, str) and dataset in TFDS_DATASETS:
        return tfds.info(dataset, data_dir)
    return load(dataset, data_dir, image_size, test_dir, holdout).info


@functools.cache
def in_memory(name: str) -> Source:
    """digits or synthetic: small, built in memory once per process."""
    from swd_keras.data.sources import digits, synthetic

    return digits.load() if name == "digits" else synthetic.load()
