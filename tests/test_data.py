"""Tests of swd_keras.data: splits, per-epoch determinism, augmentation, cutout, tfds paths.

The tfds datasets are exercised through their real code path with
``tfds.testing.mock_data`` (random examples, offline); digits is real data.
"""

from __future__ import annotations

import http.server
import io
import socket
import tarfile
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from swd_keras.data import (
    DATASETS,
    DatasetUnavailableError,
    cutout,
    get_dataset_info,
    search_data,
    train_data,
)
from swd_keras.data.sources import synthetic
from swd_keras.data.sources import tfds as tfds_source

# ----------------------------------------------------------------------------- helpers


def _batches(dataset: tf.data.Dataset) -> list:
    return list(dataset.as_numpy_iterator())


def _raw(images: np.ndarray, info, max_value: float) -> np.ndarray:
    """Undoes the normalisation: the stored integer pixel values."""
    return np.round((images * np.array(info.std) + np.array(info.mean)) * max_value)


def _hashes(raw: np.ndarray) -> list[bytes]:
    return [image.astype(np.uint8).tobytes() for image in raw]


def _digits_by_hash() -> dict[bytes, int]:
    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[..., None]
    return dict(zip(_hashes(images), bunch.target.tolist(), strict=True))


def _concat(batches: list) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def _darts_mask(height: int, width: int, cy: int, cx: int, length: int) -> np.ndarray:
    """DARTS' Cutout mask (utils.Cutout), in NumPy: True where zeroed."""
    y1, y2 = np.clip(cy - length // 2, 0, height), np.clip(cy + length // 2, 0, height)
    x1, x2 = np.clip(cx - length // 2, 0, width), np.clip(cx + length // 2, 0, width)
    mask = np.zeros((height, width), bool)
    mask[y1:y2, x1:x2] = True
    return mask


def _shifted_candidates(image: np.ndarray, pad: int, flips: bool) -> list[np.ndarray]:
    """Every pad-and-crop (and mirror) of ``image`` (H, W, C), computed in NumPy."""
    height, width = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    crops = [
        padded[dy : dy + height, dx : dx + width]
        for dy in range(2 * pad + 1)
        for dx in range(2 * pad + 1)
    ]
    return crops + [crop[:, ::-1] for crop in crops] if flips else crops


@pytest.fixture
def offline(monkeypatch):
    """Makes the network check fail, whatever the machine's network."""
    monkeypatch.setattr(tfds_source, "can_reach", lambda url, timeout=3.0: False)


@pytest.fixture
def download_allowed(monkeypatch):
    """Makes the network check pass (tfds' download is a no-op under mock_data)."""
    monkeypatch.setattr(tfds_source, "can_reach", lambda url, timeout=3.0: True)


# -------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call",
    [
        lambda: get_dataset_info("mnist"),
        lambda: search_data("mnist", 8),
        lambda: train_data("mnist", 8),
    ],
)
def test_unknown_dataset_lists_the_choices(call):
    with pytest.raises(ValueError) as error:
        call()
    message = str(error.value)
    assert "mnist" in message and "\n" not in message
    assert all(name in message for name in DATASETS)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 8, "seed": -1}, "seed"),
        ({"batch_size": 8, "epochs": 0}, "epochs"),
        ({"batch_size": 8, "epochs": 2, "initial_epoch": 2}, "initial_epoch"),
        ({"batch_size": 8, "limit": 0}, "limit"),
        ({"batch_size": 2000}, "batch_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        search_data("digits", **kwargs)


def test_bad_cutout_length():
    with pytest.raises(ValueError, match="cutout"):
        train_data("digits", 8, cutout=-1)
    with pytest.raises(ValueError, match="cutout=8 would blank whole digits images"):
        train_data("digits", 8, cutout=8)
    with pytest.raises(ValueError, match="length"):
        cutout(tf.ones((1, 8, 8, 1)), -2, seed=(0, 0))
    with pytest.raises(ValueError, match="batch"):
        cutout(tf.ones((8, 8, 1)), 2, seed=(0, 0))


# ------------------------------------------------------------ tfds: unavailable data


@pytest.mark.parametrize("name", ["cifar100", "cifar10"])
def test_unprepared_dataset_without_network_fails_at_once(tmp_path, offline, name):
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as error:
        search_data(name, 8, data_dir=str(tmp_path))
    elapsed = time.monotonic() - start
    message = str(error.value)
    assert elapsed < 10
    assert "\n" not in message
    assert message.startswith(f"{name} is not prepared in {tmp_path}")
    assert "no network" in message and f"tfds build {name}" in message
    assert "--data-dir" in message
    assert str(tmp_path / "downloads" / "manual") in message
    assert isinstance(error.value, ValueError)


def test_imagenet_needs_its_manual_archives(tmp_path, download_allowed):
    # Even with network: ImageNet is a manual download in tfds.
    with pytest.raises(DatasetUnavailableError) as error:
        train_data("imagenet2012", 8, data_dir=str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "downloads" / "manual") in message


def test_manual_archive_prepares_without_asking_the_network(tmp_path, monkeypatch):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    (manual / "cifar-100-binary.tar.gz").write_bytes(b"")
    calls = []

    class Prepared(Exception):
        pass

    def record(self, download_config=None, **kwargs):
        calls.append((self.name, download_config))
        raise Prepared

    def no_network_check(url, timeout=3.0):
        raise AssertionError("the network must not be asked when the archive is there")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", record)
    monkeypatch.setattr(tfds_source, "can_reach", no_network_check)
    with pytest.raises(Prepared):
        search_data("cifar100", 8, data_dir=str(tmp_path))
    [(name, config)] = calls
    assert name == "cifar100"
    assert str(config.manual_dir) == str(manual)
    assert config.try_download_gcs is False


@pytest.fixture
def local_server(monkeypatch):
    """An HTTP server on 127.0.0.1 that has ``/archive.tar.gz`` and nothing else."""
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the name http.server calls)
            found = self.path == "/archive.tar.gz"
            self.send_response(206 if found else 404)
            self.end_headers()
            if found:
                self.wfile.write(b"x")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_network_check_needs_a_real_answer(local_server):
    assert tfds_source.can_reach(f"{local_server}/archive.tar.gz", timeout=2.0)
    assert not tfds_source.can_reach(f"{local_server}/missing.tar.gz", timeout=2.0)


def test_network_check_is_bounded_in_time(monkeypatch):
    for variable in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        start = time.monotonic()
        closed_url = f"http://127.0.0.1:{closed_port}/a.tar.gz"
        assert not tfds_source.can_reach(closed_url, timeout=1.0)
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}/a"
        assert not tfds_source.can_reach(silent_url, timeout=1.0)
        assert time.monotonic() - start < 4


def test_get_dataset_info_without_prepared_data(tmp_path):
    start = time.monotonic()
    info = get_dataset_info("cifar100", data_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    assert info.input_shape == (32, 32, 3)
    assert info.num_classes == 100
    assert (info.num_train, info.num_val, info.num_test) == (50_000, 25_000, 10_000)
    assert info.mean == (0.5071, 0.4865, 0.4409) and info.std == (0.2673, 0.2564, 0.2762)
    imagenet = get_dataset_info("imagenet2012", data_dir=str(tmp_path))
    assert imagenet.input_shape == (224, 224, 3) and imagenet.num_classes == 1000
    assert not any(tmp_path.iterdir()), "get_dataset_info must not write or download"


def _write_cifar100_archive(path, train_images, train_labels, test_images, test_labels):
    """A small archive in CIFAR-100's binary format (coarse byte, fine byte, CHW pixels)."""

    def records(images, labels):
        return b"".join(
            bytes([label % 20, label]) + image.transpose(2, 0, 1).tobytes()
            for image, label in zip(images, labels, strict=True)
        )

    members = {
        "cifar-100-binary/train.bin": records(train_images, train_labels),
        "cifar-100-binary/test.bin": records(test_images, test_labels),
        "cifar-100-binary/coarse_label_names.txt": "\n".join(f"c{i}" for i in range(20)).encode(),
        "cifar-100-binary/fine_label_names.txt": "\n".join(f"f{i}" for i in range(100)).encode(),
    }
    with tarfile.open(path, "w:gz") as archive:
        for member, content in members.items():
            entry = tarfile.TarInfo(member)
            entry.size = len(content)
            archive.addfile(entry, io.BytesIO(content))


def test_cifar100_prepared_offline_from_the_original_archive(tmp_path, monkeypatch):
    # The real tfds path end to end: archive in downloads/manual -> download_and_prepare
    # -> TFRecords -> as_dataset -> our pipelines. The archive is small and made here, so
    # tfds' registered checksum of the real one is replaced by a recorder.
    rng = np.random.default_rng(0)
    train_images = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8)
    test_images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
    train_labels, test_labels = rng.integers(0, 100, 30), rng.integers(0, 100, 10)
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    _write_cifar100_archive(
        manual / "cifar-100-binary.tar.gz", train_images, train_labels, test_images, test_labels
    )
    monkeypatch.setattr(
        tfds.download.DownloadManager,
        "_register_or_validate_checksums",
        lambda self, url, url_info, path: self._recorded_url_infos.__setitem__(url, url_info),
    )
    monkeypatch.setattr(tfds_source, "can_reach", lambda url, timeout=3.0: False)

    train = train_data("cifar100", 10, data_dir=str(tmp_path), augment=False)
    assert (tmp_path / "cifar100").is_dir(), "prepared into data_dir"
    info = train.info
    assert (info.num_train, info.num_test, info.num_classes) == (30, 10, 100)
    # Every image comes back once with its label (tfds shuffles the records when it
    # writes them, so the order is tfds' own).
    for dataset, images, labels in (
        (train.test_dataset(), test_images, test_labels),
        (train.dataset, train_images, train_labels),
    ):
        x, y = _concat(_batches(dataset))
        expected = dict(zip(_hashes(images), labels.tolist(), strict=True))
        seen = _hashes(_raw(x, info, 255))
        assert sorted(seen) == sorted(expected)
        assert [expected[h] for h in seen] == y.tolist()
    # Prepared now: a second call reads it without the archive or the network.
    (manual / "cifar-100-binary.tar.gz").unlink()
    search = search_data("cifar100", 5, data_dir=str(tmp_path))
    assert (search.num_train_examples, search.num_val_examples, search.steps_per_epoch) == (
        15,
        15,
        3,
    )


# ------------------------------------------------------------------ tfds: mocked data


@pytest.mark.parametrize("name, classes", [("cifar100", 100), ("cifar10", 10)])
def test_cifar_search_data_through_tfds(tmp_path, download_allowed, name, classes):
    with tfds.testing.mock_data(num_examples=40):
        search = search_data(name, 4, seed=1, data_dir=str(tmp_path), epochs=2)
    info = search.info
    assert info.name == name and info.input_shape == (32, 32, 3)
    assert info.num_classes == classes
    assert (info.num_train, info.num_val) == (40, 20)
    assert (search.num_train_examples, search.num_val_examples) == (20, 20)
    assert search.steps_per_epoch == 5
    batches = _batches(search.dataset)
    assert len(batches) == 2 * 5
    for (x_train, y_train), (x_val, y_val) in batches:
        for x, y in ((x_train, y_train), (x_val, y_val)):
            assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
            assert y.shape == (4,) and y.dtype == np.int32
            assert ((y >= 0) & (y < classes)).all()
    x_val, y_val = _concat(_batches(search.val_dataset))
    assert x_val.shape == (20, 32, 32, 3)
    raw = _raw(x_val, info, 255)
    assert raw.min() >= 0 and raw.max() <= 255
    np.testing.assert_allclose(
        x_val, (raw / 255 - np.array(info.mean)) / np.array(info.std), atol=1e-4
    )


def test_cifar_train_data_through_tfds(tmp_path, download_allowed):
    with tfds.testing.mock_data(num_examples=40):
        train = train_data("cifar10", 8, data_dir=str(tmp_path), epochs=1)
    assert train.steps_per_epoch == 5 and train.num_examples == 40
    assert train.cutout == 16  # DARTS' default on CIFAR
    batches = _batches(train.dataset)
    assert len(batches) == 5
    assert all(x.shape == (8, 32, 32, 3) for x, _ in batches)
    x_test, y_test = _concat(_batches(train.test_dataset(16)))
    assert x_test.shape == (40, 32, 32, 3) and y_test.shape == (40,)  # remainder kept
    np.testing.assert_array_equal(x_test, _concat(_batches(train.test_dataset(16)))[0])


def test_cifar_augmentation_is_pad_crop_and_flip(tmp_path, download_allowed):
    with tfds.testing.mock_data(num_examples=24):
        plain = search_data("cifar10", 6, data_dir=str(tmp_path), augment=False)
        augmented = search_data("cifar10", 6, data_dir=str(tmp_path))
    info = plain.info
    originals = [_raw(batch[0][0], info, 255) / 255 for batch in _batches(plain.dataset)]
    results = [_raw(batch[0][0], info, 255) / 255 for batch in _batches(augmented.dataset)]
    flips = shifts = 0
    for original_batch, result_batch in zip(originals, results, strict=True):
        for original, result in zip(original_batch, result_batch, strict=True):
            candidates = _shifted_candidates(original, pad=4, flips=True)
            matches = [i for i, c in enumerate(candidates) if np.allclose(c, result, atol=1e-3)]
            assert matches, "an augmented image must be a pad-crop (maybe mirrored) of its source"
            flips += matches[0] >= 81
            shifts += matches[0] % 81 != 40  # 40 is the unshifted crop
    assert flips > 0 and shifts > 0


def test_imagenet_through_tfds_with_its_manual_archives(tmp_path):
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    for archive in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / archive).write_bytes(b"")
    with tfds.testing.mock_data(num_examples=4):
        search = search_data("imagenet2012", 2, data_dir=str(tmp_path))
        train = train_data("imagenet2012", 2, data_dir=str(tmp_path), cutout=0)
    assert search.info.input_shape == (224, 224, 3) and search.info.num_classes == 1000
    assert search.steps_per_epoch == 2  # mock_data ignores the split slices: 4 per half
    (x_train, y_train), (x_val, _) = _batches(search.dataset)[0]
    assert x_train.shape == (2, 224, 224, 3) and x_val.shape == (2, 224, 224, 3)
    assert ((y_train >= 0) & (y_train < 1000)).all()
    x_test, _ = _concat(_batches(train.test_dataset()))
    assert x_test.shape == (4, 224, 224, 3)
    assert np.isfinite(x_test).all()


# ------------------------------------------------------------------------------ digits


def test_digits_sizes_and_a_disjoint_held_out_test_part():
    by_hash = _digits_by_hash()
    info = get_dataset_info("digits")
    assert info.input_shape == (8, 8, 1) and info.num_classes == 10
    assert (info.num_train, info.num_val, info.num_test) == (1437, 718, 360)

    train = train_data("digits", 479, augment=False)  # 1437 = 3 x 479: every example once
    x_train, y_train = _concat(_batches(train.dataset))
    x_test, y_test = _concat(_batches(train.test_dataset(100)))
    assert x_train.shape == (1437, 8, 8, 1) and x_test.shape == (360, 8, 8, 1)
    train_hashes, test_hashes = _hashes(_raw(x_train, info, 16)), _hashes(_raw(x_test, info, 16))
    assert len(set(train_hashes)) == 1437 and len(set(test_hashes)) == 360
    assert not set(train_hashes) & set(test_hashes)
    assert set(train_hashes) | set(test_hashes) == set(by_hash)
    # Labels belong to their images, and lie in 0..9.
    assert [by_hash[h] for h in train_hashes] == y_train.tolist()
    assert [by_hash[h] for h in test_hashes] == y_test.tolist()
    # The test part is a stratified fifth.
    totals = np.bincount(list(by_hash.values()), minlength=10)
    assert np.all(np.abs(np.bincount(y_test, minlength=10) - totals / 5) < 1)

    search = search_data("digits", 359, seed=5, augment=False)  # halves: 719 and 718
    assert (search.num_train_examples, search.num_val_examples) == (719, 718)
    search_train = _concat([b[0] for b in _batches(search.dataset)])[0]
    search_val, _ = _concat(_batches(search.val_dataset))
    train_half = set(_hashes(_raw(search_train, info, 16)))
    val_half = set(_hashes(_raw(search_val, info, 16)))
    assert len(train_half) == 718 and len(val_half) == 718
    assert not train_half & val_half
    assert (train_half | val_half) <= set(train_hashes)


def test_digits_normalisation_statistics():
    info = get_dataset_info("digits")
    x_train, _ = _concat(_batches(train_data("digits", 479, augment=False).dataset))
    # Independently: the statistics of the training part's raw pixels, from scikit-learn.
    bunch = load_digits()
    train_hashes = set(_hashes(_raw(x_train, info, 16)))
    raw = bunch.images.astype(np.uint8)
    selected = np.array([image[..., None].tobytes() in train_hashes for image in raw])
    pixels = raw[selected] / 16.0
    np.testing.assert_allclose(info.mean, [pixels.mean()], rtol=1e-6)
    np.testing.assert_allclose(info.std, [pixels.std()], rtol=1e-6)
    np.testing.assert_allclose(x_train.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(x_train.std(), 1.0, atol=1e-5)


def test_digits_augmentation_shifts_but_never_mirrors():
    info = get_dataset_info("digits")
    plain = search_data("digits", 25, seed=2, augment=False, limit=100)
    augmented = search_data("digits", 25, seed=2, limit=100)
    shifts = 0
    for plain_batch, augmented_batch in zip(
        _batches(plain.dataset), _batches(augmented.dataset), strict=True
    ):
        for half in (0, 1):
            originals = _raw(plain_batch[half][0], info, 16) / 16
            results = _raw(augmented_batch[half][0], info, 16) / 16
            np.testing.assert_array_equal(plain_batch[half][1], augmented_batch[half][1])
            assert results.shape == (25, 8, 8, 1)
            for original, result in zip(originals, results, strict=True):
                candidates = _shifted_candidates(original, pad=1, flips=False)
                matches = [i for i, c in enumerate(candidates) if np.allclose(c, result)]
                assert matches, "a digit must be a 1-pixel shift of its source, never mirrored"
                shifts += 4 not in matches  # 4 is the unshifted crop
    assert shifts > 0


def test_train_data_applies_cutout():
    default = train_data("digits", 100, limit=300)
    assert default.cutout == 4  # half the 8-pixel side, as 16 is for CIFAR's 32
    assert train_data("digits", 100, augment=False, limit=300).cutout == 0
    with_cutout = _concat(_batches(default.dataset))[0]
    without = _concat(_batches(train_data("digits", 100, cutout=0, limit=300).dataset))[0]
    # A normalised digit pixel is never exactly 0 ((k/16 - mean) / std, mean irrational-ish):
    # exact zeros come from cutout, one clipped 4x4 square per image.
    assert not (without == 0).any()
    for image in with_cutout[..., 0]:
        rows, cols = np.nonzero(image == 0)
        assert rows.size >= 4
        height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
        assert height <= 4 and width <= 4 and rows.size == height * width


# --------------------------------------------------------------- per-epoch determinism


@pytest.mark.parametrize("make", [search_data, train_data], ids=["search", "train"])
def test_a_resumed_run_sees_the_same_batches(make):
    unbroken = make("digits", 32, seed=3, epochs=3, limit=100)
    steps = unbroken.steps_per_epoch
    batches = _batches(unbroken.dataset)
    assert len(batches) == 3 * steps
    resumed = _batches(make("digits", 32, seed=3, epochs=3, initial_epoch=1, limit=100).dataset)
    assert len(resumed) == 2 * steps
    for expected, got in zip(batches[steps:], resumed, strict=True):
        tf.nest.map_structure(np.testing.assert_array_equal, expected, got)
    # Epochs differ from each other, and so do seeds.
    first, second = batches[0], batches[steps]
    assert not np.array_equal(tf.nest.flatten(first)[0], tf.nest.flatten(second)[0])
    other_seed = _batches(make("digits", 32, seed=4, epochs=1, limit=100).dataset)[0]
    assert not np.array_equal(tf.nest.flatten(first)[0], tf.nest.flatten(other_seed)[0])


def test_epoch_orders_are_permutations_of_the_same_half():
    info = get_dataset_info("digits")
    search = search_data("digits", 20, seed=9, epochs=2, augment=False, limit=60)
    batches = _batches(search.dataset)
    steps = search.steps_per_epoch
    assert steps == 3
    epochs = [
        _hashes(_raw(_concat([b[1] for b in batches[e * steps : (e + 1) * steps]])[0], info, 16))
        for e in (0, 1)
    ]
    assert sorted(epochs[0]) == sorted(epochs[1]) and epochs[0] != epochs[1]
    val = _hashes(_raw(_concat(_batches(search.val_dataset))[0], info, 16))
    assert sorted(val) == sorted(epochs[0])


# ---------------------------------------------------------------------------- cutout


def _centred_mask(height: int, width: int, cy: int, cx: int, length: int) -> np.ndarray:
    """An odd-sided square centred on (cy, cx), clipped: True where zeroed."""
    half = (length - 1) // 2
    mask = np.zeros((height, width), bool)
    mask[max(cy - half, 0) : cy + half + 1, max(cx - half, 0) : cx + half + 1] = True
    return mask


@pytest.mark.parametrize(
    "length, reference", [(4, _darts_mask), (3, _centred_mask)], ids=["even-darts", "odd"]
)
def test_cutout_masks_exactly_the_square(length, reference):
    size = 8
    images = tf.random.stateless_uniform((2000, size, size, 2), seed=(4, 2), minval=1, maxval=2)
    result = cutout(images, length, seed=(7, 11)).numpy()
    images = images.numpy()
    masks = {
        (cy, cx): reference(size, size, cy, cx, length) for cy in range(size) for cx in range(size)
    }
    seen = set()
    for original, masked in zip(images, result, strict=True):
        zeroed = masked == 0
        assert (zeroed[..., 0] == zeroed[..., 1]).all(), "all channels share the square"
        centres = [c for c, m in masks.items() if np.array_equal(m, zeroed[..., 0])]
        assert len(centres) == 1
        seen.add(centres[0])
        np.testing.assert_array_equal(masked[~zeroed], original[~zeroed])
    assert seen == set(masks), "every pixel of the image must be drawn as a centre"
    assert masks[(3, 4)].sum() == length**2  # a centre far from the borders
    assert masks[(0, 7)].sum() < length**2  # clipped at two borders


def test_cutout_is_a_function_of_its_seed():
    images = tf.ones((16, 8, 8, 1))
    first = cutout(images, 4, seed=(1, 2)).numpy()
    np.testing.assert_array_equal(first, cutout(images, 4, seed=(1, 2)).numpy())
    assert not np.array_equal(first, cutout(images, 4, seed=(1, 3)).numpy())
    np.testing.assert_array_equal(cutout(images, 0, seed=(1, 2)).numpy(), images.numpy())


# -------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_learnable():
    info = get_dataset_info("synthetic")
    assert info.input_shape == (16, 16, 3) and info.num_classes == 10
    assert (info.num_train, info.num_test) == (512, 128)
    train = train_data("synthetic", 64, augment=False)
    x_train, y_train = _concat(_batches(train.dataset))
    x_test, y_test = _concat(_batches(train.test_dataset()))
    rebuilt = synthetic.load()  # generated afresh, not the cached copy
    np.testing.assert_array_equal(
        rebuilt.test.store.images[rebuilt.test.indices], _raw(x_test, info, 255)
    )
    # A nearest-class-mean classifier (NumPy) separates the classes on the test split.
    centroids = np.stack([x_train[y_train == k].mean(axis=0) for k in range(10)])
    distances = ((x_test[:, None] - centroids[None]) ** 2).sum(axis=(2, 3, 4))
    assert (distances.argmin(axis=1) == y_test).mean() > 0.9


# ------------------------------------------------------------- TensorFlow and GPUs


@pytest.mark.parametrize("backend, hidden", [("jax", True), ("torch", True), ("tensorflow", False)])
def test_gpus_are_hidden_from_tensorflow_where_a_pipeline_is_set_up(monkeypatch, backend, hidden):
    import keras

    calls = []
    monkeypatch.setattr(keras.backend, "backend", lambda: backend)
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda *args: calls.append(args))
    get_dataset_info("digits")
    get_dataset_info("cifar10")
    assert calls == [], "describing a dataset must leave TensorFlow's devices alone"
    search_data("digits", 8, limit=16)
    train_data("digits", 8, limit=16)
    assert calls == ([([], "GPU")] * 2 if hidden else [])
