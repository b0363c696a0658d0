"""Short names of datasets, without importing TensorFlow or Keras (the command line names
its default run folders before it chooses the Keras backend)."""

from __future__ import annotations

from pathlib import Path

TFDS_PREFIX = "tfds:"


def label(dataset) -> str:
    """A short name of ``dataset`` for folder and model names.

    Args:
        dataset: a built-in name, ``tfds:NAME``, a folder or ``.npz`` path, or an
            ``ArrayDataset``.

    Returns:
        The built-in name; NAME of ``tfds:NAME`` (``/`` and ``:`` as ``-``); a path's
        last part without its suffix; ``arrays`` for arrays.

    Example:
        >>> label("tfds:mnist"), label("/data/flowers"), label("x/train.npz")
        ('mnist', 'flowers', 'train')
    """
    if not isinstance(dataset, str | Path):
        return "arrays"
    dataset = str(dataset)
    if dataset.startswith(TFDS_PREFIX):
        return dataset[len(TFDS_PREFIX):].replace("/", "-").replace(":", "-")
    return Path(dataset).stem or dataset
