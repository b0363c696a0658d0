"""cifar10, cifar100 and imagenet2012 through TensorFlow Datasets, offline or not, and any
other tfds image classification dataset by name (``load_any``).

A bare tfds download without network retries for minutes; ``prepared_builder`` answers
within seconds instead: it prepares a dataset from the archives in tfds' manual folder,
or downloads it when the download host answers (``can_reach``), else raises
``DatasetUnavailableError`` with what to do, in one line.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from swd_keras.data.augment import IMAGENET_SIZE, ImageNetCrops, PadCropFlip
from swd_keras.data.info import DatasetError, DatasetInfo, DatasetUnavailableError
from swd_keras.data.sources import Source
from swd_keras.data.sources.arrays import array_source
from swd_keras.data.sources.own import sha256
from swd_keras.data.splits import StreamSplit

# Per-channel statistics in 0..1 units (DARTS' CIFAR values; torchvision's ImageNet ones).
_NORMALISATION = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
# Split sizes for ``info`` when tfds has no prepared metadata to read them from.
_PUBLISHED_SIZES = {
    "cifar10": (50_000, 10_000),
    "cifar100": (50_000, 10_000),
    "imagenet2012": (1_281_167, 50_000),
}
_LOAD_BATCH = 4096
_NETWORK_TIMEOUT_S = 3.0


def info(name: str, data_dir: str | None) -> DatasetInfo:
    """The dataset's info from tfds' metadata; published split sizes if not prepared."""
    with _tfds_warnings_off():
        builder = tfds.builder(name, data_dir=expand(data_dir))
    splits = builder.info.splits
    if "train" in splits and "test" in splits:
        num_train, num_test = splits["train"].num_examples, splits["test"].num_examples
    elif "train" in splits and "validation" in splits:
        num_train, num_test = splits["train"].num_examples, splits["validation"].num_examples
    else:
        num_train, num_test = _PUBLISHED_SIZES[name]
    return _info(name, builder, num_train, num_test)


def load(name: str, data_dir: str | None) -> Source:
    """CIFAR loaded into memory (uint8 arrays); ImageNet streamed as encoded JPEGs."""
    builder = prepared_builder(name, data_dir)
    mean, std = _NORMALISATION[name]
    if name == "imagenet2012":
        return _imagenet(builder, mean, std)

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=False,
            as_supervised=True,
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        images, labels = [], []
        for image_batch, label_batch in dataset.batch(_LOAD_BATCH).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        return np.concatenate(images), np.concatenate(labels).astype(np.int64)

    train_images, train_labels = read("train")
    test_images, test_labels = read("test")
    images = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])
    num_train = len(train_images)
    preprocessing = PadCropFlip(mean, std, train_images.shape[1:], max_value=255, pad=4, flip=True)
    return array_source(
        name,
        images,
        labels,
        np.arange(num_train),
        np.arange(num_train, len(images)),
        int(builder.info.features["label"].num_classes),
        preprocessing,
        tuple(builder.info.features["label"].names),
    )


def load_any(name: str, data_dir: str | None, image_size: tuple[int, int] | None,
             holdout: float | None) -> Source:
    """Any tfds image classification dataset (``tfds:NAME``), loaded into memory.

    Its image and label are the features of type ``tfds.features.Image`` and
    ``tfds.features.ClassLabel`` (``feature_keys``); its splits are ``train`` and
    ``test`` (else ``validation``, else ``holdout`` of ``train`` held out); its class
    names are the ClassLabel's.

    Args:
        name: the tfds name (with a config or version if wanted, ``NAME/CONFIG:1.0.0``).
        data_dir: tfds data folder.
        image_size: ``(height, width)`` to resize to; required for images of varying size.
        holdout: the fraction held out without a test split (None: the default).

    Returns:
        The ``Source``.

    Raises:
        DatasetError: an unknown name, no image or label feature, images of varying
            size without ``image_size``.
        DatasetUnavailableError: not prepared and not obtainable here.
    """
    from swd_keras.data.sources.own import in_memory_source, resize

    # The features are known before the data is: a dataset that cannot be searched is
    # refused without a download.
    image_key, label_key = feature_keys(checked_builder(name, data_dir).info.features, name)
    builder = prepared_builder(name, data_dir)
    image_feature = builder.info.features[image_key]
    height, width, channels = image_feature.shape
    if image_size is None and (height is None or width is None):
        raise DatasetError("image_size", f"tfds:{name} has images of varying size: pass "
                                         f"--image-size H W (image_size=(H, W))")
    size = image_size or (height, width)
    splits = list(builder.info.splits) or ["train", "test"]  # no metadata: tfds' usual
    test_split = next((split for split in ("test", "validation") if split in splits), None)

    def read(split: str) -> tuple[np.ndarray, np.ndarray]:
        dataset = builder.as_dataset(split=split, shuffle_files=False,
                                     read_config=tfds.ReadConfig(try_autocache=False))
        dataset = dataset.map(lambda example: (resize(example[image_key], size),
                                               example[label_key]))
        images, labels = [], []
        for image_batch, label_batch in dataset.batch(_LOAD_BATCH).as_numpy_iterator():
            images.append(image_batch)
            labels.append(label_batch)
        return np.concatenate(images), np.concatenate(labels).astype(np.int64)

    images, labels = read("train")
    test_images, test_labels = read(test_split) if test_split else (None, None)
    label_feature = builder.info.features[label_key]
    source = {"kind": "tfds", "name": builder.info.full_name,
              "sha256": sha256(builder.info.full_name, str(len(images)), str(size))}
    return in_memory_source(f"tfds:{name}", images, labels, test_images, test_labels,
                            tuple(label_feature.names), holdout, source)


def checked_builder(name: str, data_dir: str | None):
    """The tfds builder of ``name``, or a DatasetError naming close registered names."""
    import difflib

    with _tfds_warnings_off():
        try:
            return tfds.builder(name, data_dir=expand(data_dir))
        except tfds.core.registered.DatasetNotFoundError:
            known = tfds.list_builders(with_community_datasets=False)
    close = difflib.get_close_matches(name.split("/")[0], known, n=3)
    raise DatasetError("dataset", f"tfds has no dataset {name!r}"
                                  + (f" (did you mean {', '.join(close)}?)" if close else "")
                                  + f"; tfds.list_builders() lists the {len(known)} it has")


def feature_keys(features, name: str) -> tuple[str, str]:
    """The keys of a tfds dataset's image feature and its ClassLabel feature.

    A single feature of each type is taken; of several, the one named ``image`` /
    ``label``.

    Raises:
        DatasetError: no such feature, or several without the usual name.
    """
    kinds = ((tfds.features.Image, "image", "image"),
             (tfds.features.ClassLabel, "label", "label (ClassLabel)"))
    found = [[key for key, feature in features.items() if isinstance(feature, kind)]
             for kind, _, _ in kinds]
    for keys, (_, _, what) in zip(found, kinds, strict=True):
        if not keys:
            raise DatasetError("dataset", f"tfds:{name} has no {what} feature (it has "
                                          f"{', '.join(features.keys())}): only image "
                                          f"classification datasets can be searched")
    chosen = []
    for keys, (_, usual, what) in zip(found, kinds, strict=True):
        if len(keys) > 1 and usual not in keys:
            raise DatasetError("dataset", f"tfds:{name} has several {what} features "
                                          f"({', '.join(keys)}) and none named {usual!r}")
        chosen.append(keys[0] if len(keys) == 1 else usual)
    return chosen[0], chosen[1]


def _info(name: str, builder, num_train: int, num_test: int) -> DatasetInfo:
    mean, std = _NORMALISATION[name]
    if name == "imagenet2012":
        input_shape = (IMAGENET_SIZE, IMAGENET_SIZE, 3)
    else:
        input_shape = tuple(int(d) for d in builder.info.features["image"].shape)
    return DatasetInfo(
        name=name,
        input_shape=input_shape,
        num_classes=int(builder.info.features["label"].num_classes),
        num_train=int(num_train),
        num_val=int(num_train) // 2,
        num_test=int(num_test),
        mean=mean,
        std=std,
        class_names=tuple(builder.info.features["label"].names),
        source={"kind": "builtin", "name": name},
    )


def _imagenet(builder, mean, std) -> Source:
    def stream(split: str) -> StreamSplit:
        dataset = builder.as_dataset(
            split=split,
            shuffle_files=False,
            as_supervised=True,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        size = int(dataset.cardinality())
        if size < 0:
            raise ValueError(f"imagenet2012 split {split!r} has no known size")
        return StreamSplit(dataset, size)

    train, test = stream("train"), stream("validation")
    return Source(
        info=_info("imagenet2012", builder, train.size, test.size),
        preprocessing=ImageNetCrops(mean, std),
        train=train,
        test=test,
        # Streamed: a seeded split would need a pass over 1.28M images; tfds' slices
        # are fixed halves instead.
        search_halves=lambda seed: (stream("train[:50%]"), stream("train[50%:]")),
    )


def prepared_builder(name: str, data_dir: str | None):
    """The tfds builder of ``name``, prepared, or DatasetUnavailableError within seconds.

    Prepares the data when the archives lie in ``DATA_DIR/downloads/manual`` (tfds'
    manual folder) or, for datasets tfds may download, when the download host answers
    a one-byte request within ``_NETWORK_TIMEOUT_S``.
    """
    with _tfds_warnings_off():
        builder = tfds.builder(name, data_dir=expand(data_dir))
        prepared = builder.is_prepared()
    if prepared:
        return builder
    # With a data_dir, tfds' root is that folder: the manual folder lies under it.
    root = Path(expand(data_dir)) if data_dir is not None else Path(builder.data_dir_root)
    manual_dir = root / "downloads" / "manual"
    archives = {
        url: url_info.filename or urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
        for url, url_info in (builder.url_infos or {}).items()
    }
    archives_present = bool(archives) and all((manual_dir / f).exists() for f in archives.values())
    manual_only = builder.MANUAL_DOWNLOAD_INSTRUCTIONS is not None
    if archives_present or (
        not manual_only and archives and all(can_reach(url) for url in archives)
    ):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=str(manual_dir), try_download_gcs=False
            )
        )
        return builder
    files = ", ".join(archives.values())
    if manual_only:
        raise DatasetUnavailableError(
            f"{name} is not prepared in {root} and needs a manual download: put {files} "
            f"(from {builder.info.homepage}) in {manual_dir}, or pass --data-dir DIR where "
            f"`tfds build {name} --data_dir DIR` has prepared it"
        )
    raise DatasetUnavailableError(
        f"{name} is not prepared in {root} and cannot be downloaded (no network): run "
        f"`tfds build {name} --data_dir DIR` on a machine with network, copy DIR here and "
        f"pass --data-dir DIR (or put the original archive {files} in {manual_dir})"
    )


@contextlib.contextmanager
def _tfds_warnings_off():
    """Hides tfds' log warnings about a folder that is not prepared yet.

    That case is ours to report, in one line (``prepared_builder``).
    """
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(level)


def can_reach(url: str, timeout: float = _NETWORK_TIMEOUT_S) -> bool:
    """Whether ``url`` answers a one-byte GET with a success status within ``timeout``.

    A TCP connect alone proves nothing behind an intercepting proxy, which accepts every
    connection; an HTTP status from the real host does. The request runs in a daemon
    thread, so a hanging name lookup cannot hold the caller longer than ``timeout``.
    Proxies from the environment are honoured (by urllib, as tfds' download does).
    """
    answered = []
    done = threading.Event()

    def ask() -> None:
        try:
            request = urllib.request.Request(url, headers={"Range": "bytes=0-0"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answered.append(response.status < 400)
        except Exception:  # any failure of the probe means: no usable network
            pass
        finally:
            done.set()

    threading.Thread(target=ask, daemon=True).start()
    done.wait(timeout)
    return bool(answered) and answered[0]


def expand(data_dir: str | None) -> str | None:
    """``data_dir`` with ``~`` expanded (tfds does not expand it)."""
    return None if data_dir is None else str(Path(data_dir).expanduser())
