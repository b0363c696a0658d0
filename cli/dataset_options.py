"""The dataset options the commands share (``--dataset``, ``--data-dir``, ``--image-size``,
``--test-dir``, ``--holdout``) and the one line a bad dataset gets."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click

BUILTIN_DATASETS = ("cifar10", "cifar100", "digits", "synthetic", "imagenet2012")
DATASET_HELP = (f"A built-in dataset ({', '.join(BUILTIN_DATASETS)}), tfds:NAME (any "
                f"tensorflow-datasets image classification set), an image folder (one "
                f"subfolder per class; PATH/test/ is its test split) or an .npz file "
                f"(arrays x, y, optionally x_test, y_test, class_names).")


def dataset_options(default: str | None = None, dataset_help: str = ""):
    """The shared dataset options, as one decorator.

    Args:
        default: ``--dataset``'s default (None: no default).
        dataset_help: appended to ``--dataset``'s help.

    Returns:
        A decorator adding the options ``dataset``, ``data_dir``, ``image_size``,
        ``test_dir`` and ``holdout`` to a click command.

    Example:
        >>> @cli.command()
        ... @dataset_options(default="cifar10")
        ... def search(dataset, data_dir, image_size, test_dir, holdout): ...
    """
    options = [
        click.option("--dataset", default=default, show_default=default is not None,
                     help=" ".join(part for part in (DATASET_HELP, dataset_help) if part)),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                     help="tensorflow-datasets folder with a prepared copy (or "
                          "downloads/manual)."),
        click.option("--image-size", type=click.IntRange(min=1), nargs=2, default=None,
                     metavar="H W",
                     help="Resize a folder's, tfds or .npz images to H x W [default: their "
                          "own size, if they all share one]."),
        click.option("--test-dir", type=click.Path(file_okay=False), default=None,
                     help="An image folder's test split [default: DATASET/test, else "
                          "--holdout of the images]."),
        click.option("--holdout", type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     default=None,
                     help="Fraction held out as the test split where the dataset has none "
                          "(stratified, the same for every seed) [default: 0.1]."),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def image_size(value) -> tuple[int, int] | None:
    """``--image-size``'s value as a tuple, None when not given (click gives ``()``)."""
    return tuple(value) if value else None


def data_settings(options: dict) -> dict:
    """The options besides ``--dataset`` as keyword arguments (``data_dir``,
    ``image_size``, ``test_dir``, ``holdout``) of ``pipeline_config``, the hypermodels and
    ``run_ablation``."""
    return {"data_dir": options["data_dir"], "image_size": image_size(options["image_size"]),
            "test_dir": options["test_dir"], "holdout": options["holdout"]}


@contextlib.contextmanager
def dataset_errors() -> Iterator[None]:
    """Turns a ``DatasetError`` into a click ``BadParameter`` naming its option."""
    from swd_keras.data import DatasetError

    try:
        yield
    except DatasetError as error:
        option = "--" + {"x": "dataset", "y": "dataset"}.get(error.argument,
                                                             error.argument).replace("_", "-")
        raise click.BadParameter(str(error), param_hint=f"'{option}'") from None
